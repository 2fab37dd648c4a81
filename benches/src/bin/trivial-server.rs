//! `trivial-server`: the HTTP ceiling of this machine.
//!
//! A hyper HTTP/1.1 keep-alive server that answers every request with `{"key":"k","value":"v"}`
//! (GETs with a value of `--value-size` bytes if given; writes with `{"status":"ok","id":0}`).
//! The first line on stdout is `listening on ADDR`, so scripts can bind port 0 and read the port
//! back. It stops on SIGINT or SIGTERM, or when `--lifetime` has passed.

use std::net::SocketAddr;
use std::process::ExitCode;
use std::time::Duration;

use clap::Parser;
use kv_bench::duration::parse_duration_text;
use kv_bench::trivial_server::{serve_trivial_answering, trivial_get_body};

/// The longest a trivial server may live.
const LIFETIME_MAX: Duration = Duration::from_secs(24 * 3600);

/// A minimal HTTP/1.1 server answering every request with one fixed small JSON body.
#[derive(Debug, Parser)]
#[command(name = "trivial-server", version)]
struct TrivialServerArgs {
    /// Address to listen on; port 0 picks a free port (printed on stdout line 1).
    #[arg(long = "listen", default_value = "127.0.0.1:0")]
    listen_address: SocketAddr,

    /// Tokio worker threads (default: one per core).
    #[arg(long = "threads", value_name = "N")]
    thread_count: Option<usize>,

    /// Stop by itself after this long, e.g. 10m.
    #[arg(long = "lifetime", default_value = "1h", value_parser = parse_duration_text)]
    lifetime: Duration,

    /// Answer GETs with a value of this many bytes (`{"key":"k","value":"vvv…"}`), as kvd
    /// answers a GET of such a value [default: the one-byte value "v"].
    #[arg(long = "value-size", value_name = "BYTES")]
    value_size: Option<usize>,
}

fn main() -> ExitCode {
    let arguments = TrivialServerArgs::parse();
    if arguments.lifetime > LIFETIME_MAX {
        eprintln!(
            "trivial-server: --lifetime is at most {}s",
            LIFETIME_MAX.as_secs()
        );
        return ExitCode::from(1);
    }
    let mut runtime_builder = tokio::runtime::Builder::new_multi_thread();
    runtime_builder.enable_all();
    if let Some(thread_count) = arguments.thread_count {
        runtime_builder.worker_threads(thread_count.max(1));
    }
    let runtime = match runtime_builder.build() {
        Ok(runtime) => runtime,
        Err(error) => {
            eprintln!("trivial-server: cannot start the tokio runtime: {error}");
            return ExitCode::from(1);
        }
    };
    match runtime.block_on(serve(arguments)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            eprintln!("trivial-server: {error}");
            ExitCode::from(1)
        }
    }
}

async fn serve(arguments: TrivialServerArgs) -> std::io::Result<()> {
    let listener = tokio::net::TcpListener::bind(arguments.listen_address).await?;
    let local_address = listener.local_addr()?;
    {
        use std::io::Write;
        let mut stdout = std::io::stdout().lock();
        writeln!(stdout, "listening on {local_address}")?;
        stdout.flush()?;
    }
    let mut terminate_signal =
        tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
    let shutdown = async move {
        tokio::select! {
            _ = tokio::signal::ctrl_c() => {}
            _ = terminate_signal.recv() => {}
            () = tokio::time::sleep(arguments.lifetime) => {
                eprintln!("trivial-server: lifetime over, stopping");
            }
        }
    };
    serve_trivial_answering(listener, trivial_get_body(arguments.value_size), shutdown).await;
    Ok(())
}
