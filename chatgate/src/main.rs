//! The `chatgate` binary: see [`chatgate::cli`] for what it does.

fn main() -> std::process::ExitCode {
    chatgate::cli::main(std::env::args().skip(1))
}
