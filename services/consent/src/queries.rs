//! Answers read-only questions about the ledger over NATS request/reply, so the gateway and
//! the CLI never read this service's tables.

use custodian_events::queries::{self, ConsentQuery, ConsentReply};
use custodian_store::Store;
use futures::StreamExt;
use tokio_util::sync::CancellationToken;

use crate::persistence;

pub async fn serve(
    client: async_nats::Client,
    store: Store,
    shutdown: CancellationToken,
) -> Result<(), async_nats::SubscribeError> {
    let mut requests = client.queue_subscribe(queries::CONSENTS, "consent".to_owned()).await?;
    loop {
        let request = tokio::select! {
            () = shutdown.cancelled() => break,
            next = requests.next() => match next { Some(r) => r, None => break },
        };
        let Some(reply_to) = request.reply.clone() else {
            continue;
        };
        let reply = match serde_json::from_slice::<ConsentQuery>(&request.payload) {
            Err(e) => ConsentReply::Error(format!("invalid query: {e}")),
            Ok(query) => match persistence::query(store.db(), &query).await {
                Ok(views) => ConsentReply::Consents(views),
                Err(e) => {
                    tracing::warn!(error = %e, "consent query failed");
                    ConsentReply::Error("the consent ledger is unavailable".into())
                }
            },
        };
        let body = serde_json::to_vec(&reply).unwrap_or_default();
        if let Err(e) = client.publish(reply_to, body.into()).await {
            tracing::warn!(error = %e, "consent query reply not sent");
        }
    }
    Ok(())
}
