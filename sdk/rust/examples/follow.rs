//! Follow one topic: `cargo run -p yorker-client --example follow -- 127.0.0.1:7000 match/42`.
use std::time::Duration;
use yorker_client::{Client, Event};

fn main() {
    let mut args = std::env::args().skip(1);
    let addr = args.next().unwrap_or_else(|| "127.0.0.1:7000".into());
    let topic = args.next().unwrap_or_else(|| "match/42".into());
    let token = std::env::var("YORKER_TOKEN").unwrap_or_default();
    let mut client = Client::connect(&addr, &token);
    client.subscribe(&topic);
    loop {
        match client.poll(Duration::from_secs(1)) {
            Some(Event::Update { seq, payload, .. }) => {
                println!("seq {seq}: {} bytes", payload.len())
            }
            Some(Event::Reset { seq, .. }) => println!("state replaced at seq {seq}"),
            Some(Event::Disconnected {
                reason,
                retry_in_ms: Some(ms),
            }) => println!("{reason:?}: retrying in {ms} ms"),
            Some(Event::Disconnected {
                reason,
                retry_in_ms: None,
            }) => return eprintln!("gave up: {reason:?}"),
            _ => {}
        }
    }
}
