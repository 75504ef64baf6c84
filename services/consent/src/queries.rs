//! Answers read-only questions about the ledger over NATS request/reply, so the gateway and
//! the CLI never read this service's tables.

use custodian_events::queries::{self, ConsentQuery, ConsentReply, ConsentView, IdleQuery, IdleReply};
use custodian_store::Store;
use futures::StreamExt;
use tokio_util::sync::CancellationToken;

use crate::persistence;

pub async fn serve(
    client: async_nats::Client,
    store: Store,
    shutdown: CancellationToken,
) -> Result<(), async_nats::SubscribeError> {
    let consents = client.queue_subscribe(queries::CONSENTS, "consent".to_owned()).await?;
    let idle = client.queue_subscribe(queries::IDLE_CONSENTS, "consent".to_owned()).await?;
    let platforms = client.queue_subscribe(queries::PLATFORMS, "consent".to_owned()).await?;
    let mut requests = futures::stream::select(consents, futures::stream::select(idle, platforms));
    loop {
        let request = tokio::select! {
            () = shutdown.cancelled() => break,
            next = requests.next() => match next { Some(r) => r, None => break },
        };
        let Some(reply_to) = request.reply.clone() else {
            continue;
        };
        let body = match request.subject.as_str() {
            queries::IDLE_CONSENTS => serde_json::to_vec(&answer_idle(&store, &request.payload).await),
            queries::PLATFORMS => serde_json::to_vec(&match persistence::platforms(store.db()).await {
                Ok(list) => IdleReply::Platforms(list),
                Err(e) => unavailable(&e, IdleReply::Error),
            }),
            _ => serde_json::to_vec(&match serde_json::from_slice::<ConsentQuery>(&request.payload) {
                Err(e) => ConsentReply::Error(format!("invalid query: {e}")),
                Ok(query) => match answer_consents(&store, &query).await {
                    Ok(views) => ConsentReply::Consents(views),
                    Err(e) => unavailable(&e, ConsentReply::Unavailable),
                },
            }),
        }
        .unwrap_or_default();
        if let Err(e) = client.publish(reply_to, body.into()).await {
            tracing::warn!(error = %e, "consent query reply not sent");
        }
    }
    Ok(())
}

/// With their histories, the consents and the history rows are read in one snapshot, so that
/// a consent's state is the one its history ends in.
async fn answer_consents(
    store: &Store,
    query: &ConsentQuery,
) -> Result<Vec<ConsentView>, custodian_store::sea_orm::DbErr> {
    if !query.with_history {
        return persistence::query(store.db(), query).await;
    }
    let snapshot = store.begin_snapshot().await?;
    persistence::query(&snapshot, query).await
}

async fn answer_idle(store: &Store, payload: &[u8]) -> IdleReply {
    let query: IdleQuery = match serde_json::from_slice(payload) {
        Ok(q) => q,
        Err(e) => return IdleReply::Error(format!("invalid query: {e}")),
    };
    let total = if query.with_total {
        match persistence::idle_count(store.db(), &query).await {
            Ok(n) => Some(n),
            Err(e) => return unavailable(&e, IdleReply::Error),
        }
    } else {
        None
    };
    match persistence::idle_page(store.db(), &query).await {
        Ok(consents) => IdleReply::Page { consents, total },
        Err(e) => unavailable(&e, IdleReply::Error),
    }
}

fn unavailable<T>(e: &custodian_store::sea_orm::DbErr, make: impl FnOnce(String) -> T) -> T {
    tracing::warn!(error = %e, "consent query failed");
    make("the consent ledger is unavailable".into())
}
