//! The little of WASI a guest gets: standard output and error that go to the host's log
//! under the component's name (bounded per call), an empty standard input, an empty
//! environment and no arguments. A Rust guest's `println!`, `eprintln!` and `env::var` work;
//! files, clocks, randomness and sockets stay undefined and trap when used, so nothing a
//! guest does can depend on when or where it runs.
//!
//! Written against the WASI 0.2 interfaces (`runtime/wit-guest-io`) rather than linking
//! wasmtime-wasi: its synchronous bindings block on a Tokio runtime from inside the call,
//! which panics on the async threads where actors call their guests, and it would bring
//! the filesystem, clocks and sockets this host must not grant.

use wasmtime::component::{HasSelf, Linker, Resource, ResourceTable};

mod wit {
    wasmtime::component::bindgen!({
        world: "guest-io",
        path: "wit-guest-io",
        imports: { default: trappable },
        with: {
            "wasi:io/error.error": super::IoError,
            "wasi:io/poll.pollable": super::Pollable,
            "wasi:io/streams.input-stream": super::InputStream,
            "wasi:io/streams.output-stream": super::OutputStream,
        },
    });
}

use wit::wasi::cli::{environment, exit, stderr, stdin, stdout};
use wit::wasi::io::streams::StreamError;
use wit::wasi::io::{error, poll, streams};

/// The most a guest may write to its standard output and error in one call; the rest is
/// dropped (the guest is not told, so a chatty guest is not broken by its logging).
pub const MAX_OUTPUT_PER_CALL: usize = 64 << 10;

/// How much a guest may ask to write at once.
const WRITE_BUDGET: u64 = 4096;

/// Never created: no operation fails with an error resource.
pub struct IoError;
pub struct Pollable;
pub struct InputStream;
#[derive(Clone, Copy)]
pub enum OutputStream {
    Stdout,
    Stderr,
}

impl OutputStream {
    fn name(self) -> &'static str {
        match self {
            OutputStream::Stdout => "stdout",
            OutputStream::Stderr => "stderr",
        }
    }
}

/// One call's standard streams: lines go to the log as they complete, the rest when the
/// instance is dropped at the end of the call.
pub struct GuestIo {
    component: String,
    table: ResourceTable,
    pending: [Vec<u8>; 2],
    written: usize,
    truncated: bool,
}

impl GuestIo {
    pub fn new(component: &str) -> Self {
        GuestIo {
            component: component.to_owned(),
            table: ResourceTable::new(),
            pending: [Vec::new(), Vec::new()],
            written: 0,
            truncated: false,
        }
    }

    fn write(&mut self, stream: OutputStream, bytes: &[u8]) {
        let room = MAX_OUTPUT_PER_CALL - self.written;
        if bytes.len() > room && !self.truncated {
            self.truncated = true;
            tracing::warn!(
                component = self.component,
                "the guest wrote more than {MAX_OUTPUT_PER_CALL} bytes in one call; the rest is dropped"
            );
        }
        let kept = &bytes[..bytes.len().min(room)];
        self.written += kept.len();
        let pending = &mut self.pending[stream as usize];
        pending.extend_from_slice(kept);
        if let Some(end) = pending.iter().rposition(|b| *b == b'\n') {
            let lines: Vec<u8> = pending.drain(..=end).collect();
            self.log(stream, &lines);
        }
    }

    fn log(&self, stream: OutputStream, bytes: &[u8]) {
        let text = String::from_utf8_lossy(bytes);
        for line in text.lines() {
            match stream {
                OutputStream::Stdout => {
                    tracing::info!(component = self.component, stream = stream.name(), "{line}")
                }
                OutputStream::Stderr => {
                    tracing::warn!(component = self.component, stream = stream.name(), "{line}")
                }
            }
        }
    }
}

impl Drop for GuestIo {
    fn drop(&mut self) {
        for stream in [OutputStream::Stdout, OutputStream::Stderr] {
            let rest = std::mem::take(&mut self.pending[stream as usize]);
            if !rest.is_empty() {
                self.log(stream, &rest);
            }
        }
    }
}

/// Grant the guest-io imports to a store whose data holds a [`GuestIo`] at `get`.
pub fn add_to_linker<T: 'static>(
    linker: &mut Linker<T>,
    get: fn(&mut T) -> &mut GuestIo,
) -> wasmtime::Result<()> {
    wit::GuestIo::add_to_linker::<T, HasSelf<GuestIo>>(linker, get)
}

impl error::Host for GuestIo {}

impl error::HostError for GuestIo {
    fn to_debug_string(&mut self, _error: Resource<IoError>) -> wasmtime::Result<String> {
        Ok(String::new())
    }

    fn drop(&mut self, error: Resource<IoError>) -> wasmtime::Result<()> {
        self.table.delete(error)?;
        Ok(())
    }
}

impl poll::Host for GuestIo {
    /// Every stream is always ready: writes land in memory, reads end at once.
    fn poll(&mut self, pollables: Vec<Resource<Pollable>>) -> wasmtime::Result<Vec<u32>> {
        Ok((0..pollables.len() as u32).collect())
    }
}

impl poll::HostPollable for GuestIo {
    fn ready(&mut self, _pollable: Resource<Pollable>) -> wasmtime::Result<bool> {
        Ok(true)
    }

    fn block(&mut self, _pollable: Resource<Pollable>) -> wasmtime::Result<()> {
        Ok(())
    }

    fn drop(&mut self, pollable: Resource<Pollable>) -> wasmtime::Result<()> {
        self.table.delete(pollable)?;
        Ok(())
    }
}

impl streams::Host for GuestIo {}

/// Every blocking operation is its non-blocking twin: nothing here ever has to wait.
impl streams::HostInputStream for GuestIo {
    fn read(
        &mut self,
        _stream: Resource<InputStream>,
        _len: u64,
    ) -> wasmtime::Result<Result<Vec<u8>, StreamError>> {
        Ok(Err(StreamError::Closed))
    }

    fn blocking_read(
        &mut self,
        stream: Resource<InputStream>,
        len: u64,
    ) -> wasmtime::Result<Result<Vec<u8>, StreamError>> {
        streams::HostInputStream::read(self, stream, len)
    }

    fn skip(
        &mut self,
        _stream: Resource<InputStream>,
        _len: u64,
    ) -> wasmtime::Result<Result<u64, StreamError>> {
        Ok(Err(StreamError::Closed))
    }

    fn blocking_skip(
        &mut self,
        stream: Resource<InputStream>,
        len: u64,
    ) -> wasmtime::Result<Result<u64, StreamError>> {
        streams::HostInputStream::skip(self, stream, len)
    }

    fn subscribe(&mut self, _stream: Resource<InputStream>) -> wasmtime::Result<Resource<Pollable>> {
        Ok(self.table.push(Pollable)?)
    }

    fn drop(&mut self, stream: Resource<InputStream>) -> wasmtime::Result<()> {
        self.table.delete(stream)?;
        Ok(())
    }
}

impl GuestIo {
    fn stream(&self, stream: &Resource<OutputStream>) -> wasmtime::Result<OutputStream> {
        Ok(*self.table.get(stream)?)
    }
}

impl streams::HostOutputStream for GuestIo {
    fn check_write(&mut self, _stream: Resource<OutputStream>) -> wasmtime::Result<Result<u64, StreamError>> {
        Ok(Ok(WRITE_BUDGET))
    }

    fn write(
        &mut self,
        stream: Resource<OutputStream>,
        contents: Vec<u8>,
    ) -> wasmtime::Result<Result<(), StreamError>> {
        if contents.len() as u64 > WRITE_BUDGET {
            wasmtime::bail!(
                "the guest wrote {} bytes at once; check-write allows at most {WRITE_BUDGET}",
                contents.len()
            );
        }
        let which = self.stream(&stream)?;
        GuestIo::write(self, which, &contents);
        Ok(Ok(()))
    }

    /// Writes land in memory at once, so a blocking write is a write.
    fn blocking_write_and_flush(
        &mut self,
        stream: Resource<OutputStream>,
        contents: Vec<u8>,
    ) -> wasmtime::Result<Result<(), StreamError>> {
        streams::HostOutputStream::write(self, stream, contents)
    }

    fn flush(&mut self, _stream: Resource<OutputStream>) -> wasmtime::Result<Result<(), StreamError>> {
        Ok(Ok(()))
    }

    fn blocking_flush(
        &mut self,
        stream: Resource<OutputStream>,
    ) -> wasmtime::Result<Result<(), StreamError>> {
        streams::HostOutputStream::flush(self, stream)
    }

    fn subscribe(&mut self, _stream: Resource<OutputStream>) -> wasmtime::Result<Resource<Pollable>> {
        Ok(self.table.push(Pollable)?)
    }

    fn write_zeroes(
        &mut self,
        stream: Resource<OutputStream>,
        len: u64,
    ) -> wasmtime::Result<Result<(), StreamError>> {
        let zeroes = vec![0; len.min(WRITE_BUDGET) as usize];
        streams::HostOutputStream::write(self, stream, zeroes)
    }

    fn blocking_write_zeroes_and_flush(
        &mut self,
        stream: Resource<OutputStream>,
        len: u64,
    ) -> wasmtime::Result<Result<(), StreamError>> {
        streams::HostOutputStream::write_zeroes(self, stream, len)
    }

    /// Standard input is always empty, so there is nothing to splice.
    fn splice(
        &mut self,
        _stream: Resource<OutputStream>,
        _source: Resource<InputStream>,
        _len: u64,
    ) -> wasmtime::Result<Result<u64, StreamError>> {
        Ok(Err(StreamError::Closed))
    }

    fn blocking_splice(
        &mut self,
        stream: Resource<OutputStream>,
        source: Resource<InputStream>,
        len: u64,
    ) -> wasmtime::Result<Result<u64, StreamError>> {
        streams::HostOutputStream::splice(self, stream, source, len)
    }

    fn drop(&mut self, stream: Resource<OutputStream>) -> wasmtime::Result<()> {
        self.table.delete(stream)?;
        Ok(())
    }
}

impl environment::Host for GuestIo {
    fn get_environment(&mut self) -> wasmtime::Result<Vec<(String, String)>> {
        Ok(Vec::new())
    }

    fn get_arguments(&mut self) -> wasmtime::Result<Vec<String>> {
        Ok(Vec::new())
    }

    fn initial_cwd(&mut self) -> wasmtime::Result<Option<String>> {
        Ok(None)
    }
}

impl exit::Host for GuestIo {
    fn exit(&mut self, status: Result<(), ()>) -> wasmtime::Result<()> {
        let status = if status.is_ok() { "success" } else { "failure" };
        wasmtime::bail!("the guest called exit ({status}); a component must return instead")
    }
}

impl stdin::Host for GuestIo {
    fn get_stdin(&mut self) -> wasmtime::Result<Resource<InputStream>> {
        Ok(self.table.push(InputStream)?)
    }
}

impl stdout::Host for GuestIo {
    fn get_stdout(&mut self) -> wasmtime::Result<Resource<OutputStream>> {
        Ok(self.table.push(OutputStream::Stdout)?)
    }
}

impl stderr::Host for GuestIo {
    fn get_stderr(&mut self) -> wasmtime::Result<Resource<OutputStream>> {
        Ok(self.table.push(OutputStream::Stderr)?)
    }
}

/// The interfaces [`add_to_linker`] grants, matched to any 0.2.x a guest imports.
const GRANTED: [&str; 8] = [
    "wasi:io/error",
    "wasi:io/poll",
    "wasi:io/streams",
    "wasi:cli/environment",
    "wasi:cli/exit",
    "wasi:cli/stdin",
    "wasi:cli/stdout",
    "wasi:cli/stderr",
];

/// The type of a resource named `name` in an interface the host does not grant: the
/// granted one when it is a `wasi:io` resource used there (`wasi:filesystem/types` uses
/// `input-stream`), so the two are the same type, as the guest expects; else a type of no
/// value, since nothing that would make one is defined.
fn resource_type(name: &str) -> wasmtime::component::ResourceType {
    use wasmtime::component::ResourceType;
    match name {
        "input-stream" => ResourceType::host::<InputStream>(),
        "output-stream" => ResourceType::host::<OutputStream>(),
        "pollable" => ResourceType::host::<Pollable>(),
        "error" => ResourceType::host::<IoError>(),
        _ => ResourceType::host::<()>(),
    }
}

/// Define every import of `component` the host does not grant as a function that traps
/// when called (so a guest that links a capability it never uses still loads).
///
/// Not `Linker::define_unknown_imports_as_traps`: it defines an empty instance under the
/// exact name a guest imports (`wasi:cli/stdout@0.2.6`), which would hide the granted
/// `@0.2.12` from wasmtime's semver-compatible lookup.
pub fn trap_other_imports<T: 'static>(
    linker: &mut Linker<T>,
    component: &wasmtime::component::Component,
) -> wasmtime::Result<()> {
    use wasmtime::component::types::ComponentItem;
    let engine = linker.engine().clone();
    for (name, item) in component.component_type().imports(&engine) {
        let (interface, version) = name.split_once('@').unwrap_or((name, ""));
        let granted = GRANTED.contains(&interface) && version.starts_with("0.2.");
        if granted || interface.starts_with("cairn:runtime/") {
            continue;
        }
        let ComponentItem::ComponentInstance(instance) = item.ty else {
            wasmtime::bail!("the component imports `{name}`, which is not an interface");
        };
        let mut stubs = linker.instance(name)?;
        for (export, item) in instance.exports(&engine) {
            match item.ty {
                ComponentItem::ComponentFunc(_) => {
                    let qualified = format!("{name}#{export}");
                    stubs.func_new(export, move |_, _, _, _| {
                        wasmtime::bail!("unknown import: `{qualified}` has not been defined")
                    })?;
                }
                ComponentItem::Resource(_) => {
                    stubs.resource(export, resource_type(export), |_, _| Ok(()))?;
                }
                _ => {}
            }
        }
    }
    Ok(())
}
