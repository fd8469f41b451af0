//! The `cairn` binary: all of it lives in the library.

fn main() -> std::process::ExitCode {
    cairn::cli::run()
}
