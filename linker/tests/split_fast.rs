//! FAST order across the processors of a split deployment while they change: a sender's FAST
//! messages go to the processor owning its Kafka partition, so when a processor leaves
//! (SIGTERM) or joins (restart) its partitions move, and FAST follows them to the new owner,
//! each sender's messages still in order. (Order with the processors steady is the scenario
//! `each_senders_fast_messages_arrive_in_order`, in split.rs.)

use std::path::Path;

use testkit::Split;
use testkit::scenarios::fast_messages_keep_each_senders_order;

fn bin() -> &'static Path {
    Path::new(env!("CARGO_BIN_EXE_linker"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fast_follows_the_partitions_in_order_when_a_processor_leaves_and_comes_back() {
    let mut d = Split::start(bin()).await.unwrap();
    let round = async |d: &Split, what: &str| {
        if let Err(e) = fast_messages_keep_each_senders_order(d, 6, 60).await {
            panic!("{what}: {e:#}\n{}", testkit::Deployment::diagnostics(d));
        }
    };
    round(&d, "two processors").await;

    let code = d.processors[1].terminate().await.unwrap();
    println!("processor-02 stopped with {code:?}");
    d.settled().await.unwrap();
    round(&d, "processor-01 alone, owning every partition").await;

    d.processors[1].restart().await.unwrap();
    d.settled().await.unwrap();
    round(&d, "processor-02 back, owning some partitions again").await;
}
