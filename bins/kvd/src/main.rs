//! The `kvd` binary: everything is in the `kvd` library (`lib.rs`).

fn main() -> std::process::ExitCode {
    kvd::main()
}
