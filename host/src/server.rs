//! `cairn serve`: open the host, serve HTTP until SIGINT or SIGTERM, then stop the host in
//! order (see [`Host::shutdown`]).

use crate::config::ServeConfig;
use crate::host::Host;
use crate::http;
use anyhow::Context;

pub async fn serve(config: ServeConfig) -> anyhow::Result<()> {
    let host = Host::open(&config).await?;
    let listener = match tokio::net::TcpListener::bind(config.listen).await {
        Ok(listener) => listener,
        Err(error) => {
            host.shutdown().await;
            return Err(error).with_context(|| format!("listen on {}", config.listen));
        }
    };
    let address = listener.local_addr()?;
    tracing::info!("serving {} on http://{address}", config.data_dir.display());
    // Tests and scripts read the bound address (for --listen 127.0.0.1:0) from the first
    // line. One write for both lines, so a reader that stops after the first never leaves
    // the second to a closed pipe.
    println!("cairn listening on http://{address}\ncairn console at http://{address}/ui");
    let stopping = async {
        shutdown_signal().await;
        host.stop_accepting();
    };
    http::serve(listener, host.router(address), config.connections, stopping).await;
    host.shutdown().await;
    Ok(())
}

async fn shutdown_signal() {
    let interrupt = tokio::signal::ctrl_c();
    #[cfg(unix)]
    {
        let mut terminate = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
            .expect("install the SIGTERM handler");
        tokio::select! {
            _ = interrupt => {}
            _ = terminate.recv() => {}
        }
    }
    #[cfg(not(unix))]
    let _ = interrupt.await;
}
