//! What this node sends to another's inbox goes through one outbox per destination: a
//! bounded queue and one task that adds everything waiting as one stream entry (one
//! `XADD`). Under load a dispatch, its answer and the frames of many sessions share an
//! entry, so Redis appends, fsyncs (`appendfsync always`), acknowledges and deletes far
//! fewer entries than there are messages; when idle an entry holds one message, sent at
//! once. A sender still learns whether Redis took its message (a dispatch that cannot
//! be delivered is refused, never accepted and lost).

use redis::RedisResult;
use tokio::sync::{mpsc, oneshot};

use super::inbox::inbox_key;
use super::{query, Cluster};
use crate::storage::redis::Redis;

/// Messages waiting for one destination before senders wait (backpressure).
const QUEUE: usize = 4096;
/// Most messages in one entry.
const MOST: usize = 256;
/// An entry stops growing past this many bytes.
const MOST_BYTES: usize = 1 << 20;
/// Most entries kept in an inbox (a node that stops reading cannot fill Redis).
const MAX_LEN: usize = 100_000;

/// One encoded message and who waits for Redis to take it.
type Item = (String, oneshot::Sender<RedisResult<()>>);

/// The sending side of one destination's outbox.
pub(super) type Outbox = mpsc::Sender<Item>;

impl Cluster {
    /// Adds the encoded message `json` to `node`'s inbox; returns once Redis took it.
    pub(super) async fn post(&self, node: &str, json: String) -> RedisResult<()> {
        let (tx, rx) = oneshot::channel();
        let mut item = (json, tx);
        // Twice at most: an outbox whose task ended (its node was lost and came back)
        // is replaced once.
        for _ in 0..2 {
            let outbox = self.outbox(node);
            match outbox.send(item).await {
                Ok(()) => {
                    return rx.await.unwrap_or_else(|_| Err(gone()));
                }
                Err(mpsc::error::SendError(back)) => {
                    self.outboxes
                        .remove_if(node, |_, o| o.same_channel(&outbox));
                    item = back;
                }
            }
        }
        Err(gone())
    }

    /// The outbox for `node`, started on first use.
    fn outbox(&self, node: &str) -> Outbox {
        if let Some(o) = self.outboxes.get(node) {
            return o.clone();
        }
        self.outboxes
            .entry(node.to_owned())
            .or_insert_with(|| {
                let (tx, rx) = mpsc::channel(QUEUE);
                tokio::spawn(run(self.conn(), inbox_key(node), rx));
                tx
            })
            .clone()
    }

    /// Forgets `node`'s outbox (the node was lost): its task ends once what it holds is
    /// sent.
    pub(super) fn drop_outbox(&self, node: &str) {
        self.outboxes.remove(node);
    }
}

fn gone() -> redis::RedisError {
    redis::RedisError::from((redis::ErrorKind::Io, "the outbox ended"))
}

/// Sends what `rx` holds to the stream `key`, everything waiting in one entry, until
/// every sender is dropped.
async fn run(mut conn: Redis, key: String, mut rx: mpsc::Receiver<Item>) {
    let mut batch: Vec<Item> = Vec::with_capacity(MOST);
    while let Some(first) = rx.recv().await {
        let mut bytes = first.0.len();
        batch.push(first);
        while batch.len() < MOST && bytes < MOST_BYTES {
            match rx.try_recv() {
                Ok(item) => {
                    bytes += item.0.len();
                    batch.push(item);
                }
                Err(_) => break,
            }
        }
        let entry = encode(&mut batch, bytes);
        let sent = add(&mut conn, &key, entry).await;
        for (_, tx) in batch.drain(..) {
            let _ = tx.send(sent.clone());
        }
    }
}

/// One message as itself; several as a JSON array of them.
fn encode(batch: &mut [Item], bytes: usize) -> String {
    if let [(one, _)] = batch {
        return std::mem::take(one);
    }
    let mut out = String::with_capacity(bytes + batch.len() + 2);
    out.push('[');
    for (i, (json, _)) in batch.iter().enumerate() {
        if i > 0 {
            out.push(',');
        }
        out.push_str(json);
    }
    out.push(']');
    out
}

async fn add(conn: &mut Redis, key: &str, entry: String) -> RedisResult<()> {
    query::<redis::Value>(
        conn,
        redis::cmd("XADD")
            .arg(key)
            .arg("MAXLEN")
            .arg("~")
            .arg(MAX_LEN)
            .arg("*")
            .arg("m")
            .arg(entry),
    )
    .await
    .map(drop)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn item(json: &str) -> Item {
        (json.to_owned(), oneshot::channel().0)
    }

    #[test]
    fn one_message_is_sent_as_itself_and_several_as_one_array_in_order() {
        let one = r#"{"type":"reply","req":1,"outcome":{"outcome":"ok"}}"#;
        assert_eq!(encode(&mut [item(one)], one.len()), one);
        let two = r#"{"type":"reply","req":2,"outcome":{"outcome":"busy"}}"#;
        let mut batch = [item(one), item(two)];
        let entry = encode(&mut batch, one.len() + two.len());
        let back: Vec<serde_json::Value> = serde_json::from_str(&entry).unwrap();
        assert_eq!(back[0]["req"], 1);
        assert_eq!(back[1]["outcome"]["outcome"], "busy");
    }
}
