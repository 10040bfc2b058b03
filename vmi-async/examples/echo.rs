//! An echo server and client on the async facade, over whatever the specfile names.
//!
//! ```text
//! VMI_SPECFILE=specfiles/shmem.xml cargo run -p vmi-async --example echo -- server srv
//! VMI_SPECFILE=specfiles/shmem.xml cargo run -p vmi-async --example echo -- client cli srv localhost
//! ```
//! The server echoes every message and answers every request; the client sends a few of each
//! and prints what comes back.

use std::time::Duration;

use clap::{Parser, Subcommand};
use vmi_async::{AsyncVmi, Error};
use vmi_core::{RequestOptions, Vmi};

/// Echo server and client on vmi-async (needs VMI_SPECFILE).
#[derive(Parser)]
#[command(version, about)]
struct Args {
    #[command(subcommand)]
    role: Role,
}

#[derive(Subcommand)]
enum Role {
    /// Echo messages and answer requests on every connection, until interrupted.
    Server {
        /// This process's key.
        key: String,
    },
    /// Send three messages and three requests to the server and print the answers.
    Client {
        /// This process's key.
        key: String,
        /// The server's key.
        server: String,
        /// The server's host.
        #[arg(default_value = "localhost")]
        host: String,
    },
}

fn main() {
    let args = Args::parse();
    env_logger::Builder::from_env(env_logger::Env::new().filter_or("VMI_LOG", "warn")).init();
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("a tokio runtime");
    let r = tokio::task::LocalSet::new().block_on(&rt, async {
        match args.role {
            Role::Server { key } => server(&key).await,
            Role::Client { key, server, host } => client(&key, &server, &host).await,
        }
    });
    if let Err(e) = r {
        eprintln!("echo: {e}");
        std::process::exit(1);
    }
}

async fn server(key: &str) -> Result<(), Error> {
    let vmi = AsyncVmi::start(Vmi::init(Some(key))?)?;
    println!("echo server '{key}' ready");
    let answering = vmi.clone();
    tokio::task::spawn_local(async move {
        loop {
            let r = answering.next_request().await;
            if let Err(e) = answering.reply(r.id, 0, &r.data) {
                eprintln!("echo: reply: {e}");
            }
        }
    });
    loop {
        let conn = vmi.accept().await;
        let vmi = vmi.clone();
        tokio::task::spawn_local(async move {
            while let Ok(m) = vmi.recv(conn).await {
                if vmi.send(conn, m).await.is_err() {
                    break;
                }
            }
        });
    }
}

async fn client(key: &str, server: &str, host: &str) -> Result<(), Error> {
    let vmi = AsyncVmi::start(Vmi::init(Some(key))?)?;
    let conn = tokio::time::timeout(Duration::from_secs(10), vmi.connect(host, server, b""))
        .await
        .map_err(|_| Error::Failed {
            status: vmi_core::Status::Timeout,
            detail: format!("no answer from '{server}' at {host} within 10 s"),
        })??;
    for i in 0..3 {
        vmi.send(conn, format!("message {i}").into_bytes()).await?;
        let back = vmi.recv(conn).await?;
        println!("echo: {}", String::from_utf8_lossy(&back));
    }
    for i in 0..3 {
        let a = vmi
            .request(
                conn,
                format!("request {i}").as_bytes(),
                &RequestOptions::default(),
            )
            .await?;
        match a {
            vmi_core::Answer::Reply { status, data } => {
                println!("answer ({status}): {}", String::from_utf8_lossy(&data))
            }
            vmi_core::Answer::Error(code) => println!("answer: error {code}"),
        }
    }
    vmi.disconnect(conn).await
}
