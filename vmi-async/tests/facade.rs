//! The async facade end to end over shared memory and TCP: connect, accept, send, a stream
//! of received messages, send/receive/reply, pulses and disconnect, with the server and the
//! client as tasks of one thread (each driver sleeping on its event descriptor when idle)
//! and with the server on a thread of its own.

use std::time::Duration;

use vmi_async::{AsyncVmi, Error};
use vmi_core::prelude::*;
use vmi_core::spec::Spec;
use vmi_tests::{register_all, spec_text, unique_key};

fn spec(transport: &str) -> Spec {
    register_all();
    Spec::parse_str(&spec_text(transport, &[], ""), "async.xml").expect("spec")
}

/// Echoes every message of every connection, answers every request with "re:" + it, and
/// returns the number of messages echoed once the client disconnects.
async fn serve(server: AsyncVmi) -> usize {
    let conn = server.accept().await;
    let requests = {
        let server = server.clone();
        tokio::task::spawn_local(async move {
            loop {
                let r = server.next_request().await;
                let reply = [b"re:".as_slice(), &r.data].concat();
                server
                    .reply(r.id, r.data.len() as i32, &reply)
                    .expect("reply");
            }
        })
    };
    let mut echoed = 0;
    loop {
        match server.recv(conn).await {
            Ok(m) => {
                server.send(conn, m).await.expect("echo");
                echoed += 1;
            }
            Err(Error::Closed(_)) => break,
            Err(e) => panic!("server: {e}"),
        }
    }
    requests.abort();
    echoed
}

async fn client(vmi: AsyncVmi, key: &str, label: &str) {
    use futures_core::Stream;
    let conn = vmi.connect("localhost", key, b"").await.expect("connect");
    for i in 0..100u32 {
        vmi.send(conn, i.to_le_bytes().to_vec())
            .await
            .expect("send");
    }
    // The echoes, read as a stream.
    let mut echoes = vmi.messages(conn);
    for i in 0..100u32 {
        let m = std::future::poll_fn(|cx| std::pin::Pin::new(&mut echoes).poll_next(cx))
            .await
            .expect("an echo");
        assert_eq!(m, i.to_le_bytes(), "{label}: echo {i}");
    }
    for i in 0..20u8 {
        let a = vmi
            .request(conn, &[i; 5], &RequestOptions::default())
            .await
            .expect("answer");
        assert_eq!(
            a,
            Answer::Reply {
                status: 5,
                data: [b"re:".as_slice(), &[i; 5]].concat()
            },
            "{label}"
        );
    }
    vmi.disconnect(conn).await.expect("disconnect");
    assert!(
        matches!(vmi.recv(conn).await, Err(Error::Closed(_))),
        "{label}"
    );
}

#[test]
fn client_and_server_tasks_of_one_thread() {
    for transport in ["shmem", "tcp"] {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        let local = tokio::task::LocalSet::new();
        local.block_on(&rt, async {
            let sp = spec(transport);
            let key = unique_key("async-srv");
            let server = AsyncVmi::start(Vmi::with_spec(sp.clone(), &key).unwrap()).unwrap();
            let client_vmi =
                AsyncVmi::start(Vmi::with_spec(sp, &unique_key("async-cli")).unwrap()).unwrap();
            let served = tokio::task::spawn_local(serve(server));
            tokio::time::timeout(Duration::from_secs(30), client(client_vmi, &key, transport))
                .await
                .unwrap_or_else(|_| panic!("{transport}: the client made no progress"));
            let echoed = tokio::time::timeout(Duration::from_secs(10), served)
                .await
                .expect("the server ends")
                .expect("server task");
            assert_eq!(echoed, 100, "{transport}");
        });
    }
}

#[test]
fn a_server_on_its_own_thread_and_pulses() {
    let sp = spec("shmem");
    let key = unique_key("async-thr");
    let (ready_tx, ready_rx) = std::sync::mpsc::channel();
    let server = {
        let (sp, key) = (sp.clone(), key.clone());
        std::thread::spawn(move || {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .unwrap();
            tokio::task::LocalSet::new().block_on(&rt, async {
                let vmi = AsyncVmi::start(Vmi::with_spec(sp, &key).unwrap()).unwrap();
                ready_tx.send(()).unwrap();
                let (_, p) = tokio::time::timeout(Duration::from_secs(30), vmi.next_pulse())
                    .await
                    .expect("a pulse");
                p
            })
        })
    };
    ready_rx.recv().unwrap();
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    tokio::task::LocalSet::new().block_on(&rt, async {
        let vmi = AsyncVmi::start(Vmi::with_spec(sp, &unique_key("async-p")).unwrap()).unwrap();
        let conn =
            tokio::time::timeout(Duration::from_secs(30), vmi.connect("localhost", &key, b""))
                .await
                .expect("in time")
                .expect("connect");
        // Sent while the server's driver sleeps on its descriptor.
        tokio::time::sleep(Duration::from_millis(50)).await;
        vmi.pulse(
            conn,
            Pulse {
                code: 7,
                value: 70,
                priority: 3,
            },
        )
        .unwrap();
        let got = server.join().unwrap();
        assert_eq!((got.code, got.value, got.priority), (7, 70, 3));
    });
}

#[test]
fn errors_name_what_went_wrong() {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    tokio::task::LocalSet::new().block_on(&rt, async {
        let vmi = AsyncVmi::start(Vmi::with_spec(spec("shmem"), &unique_key("async-e")).unwrap())
            .unwrap();
        let e = vmi
            .connect("localhost", &unique_key("nobody"), b"")
            .await
            .unwrap_err();
        assert!(
            e.to_string().contains("unreachable") || e.to_string().contains("no transport"),
            "{e}"
        );
    });
}

#[test]
fn a_dropped_request_future_cancels_the_request_at_the_server() {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    tokio::task::LocalSet::new().block_on(&rt, async {
        let sp = spec("shmem");
        let key = unique_key("async-drop");
        // A server that never answers, run by hand to see what it is told.
        let mut server = Vmi::with_spec(sp.clone(), &key).unwrap();
        #[derive(Default)]
        struct Silent {
            got: usize,
            gone: Vec<Status>,
        }
        impl Handler for Silent {
            fn request(&mut self, _ctx: &mut Ctx<'_>, _r: &mut Request<'_>) {
                self.got += 1;
            }
            fn request_gone(&mut self, _ctx: &mut Ctx<'_>, _id: ReceiveId, status: Status) {
                self.gone.push(status);
            }
        }
        let mut hs = Silent::default();
        let client =
            AsyncVmi::start(Vmi::with_spec(sp, &unique_key("async-drop-c")).unwrap()).unwrap();
        let connect = client.connect("localhost", &key, b"");
        tokio::pin!(connect);
        let conn = loop {
            tokio::select! {
                c = &mut connect => break c.expect("connect"),
                () = tokio::time::sleep(Duration::from_millis(1)) => { server.poll(&mut hs); }
            }
        };
        let options = RequestOptions::default();
        {
            // The request's future lives in this block: leaving it drops the future.
            let waited = tokio::time::timeout(
                Duration::from_millis(200),
                client.request(conn, b"never answered", &options),
            );
            tokio::pin!(waited);
            loop {
                tokio::select! {
                    r = &mut waited => { assert!(r.is_err(), "no answer was sent"); break; }
                    () = tokio::time::sleep(Duration::from_millis(1)) => { server.poll(&mut hs); }
                }
            }
        }
        let start = std::time::Instant::now();
        while hs.gone.is_empty() {
            server.poll(&mut hs);
            tokio::time::sleep(Duration::from_millis(1)).await;
            assert!(
                start.elapsed() < Duration::from_secs(10),
                "the server was not told (it got {} requests)",
                hs.got
            );
        }
        assert_eq!((hs.got, hs.gone.clone()), (1, vec![Status::Cancelled]));
    });
}
