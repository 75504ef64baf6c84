//! Named tasks that live and die together: no fire-and-forget `tokio::spawn`. When one
//! task ends with an error, the others are cancelled; `wait` returns once all have ended.

use std::future::Future;

use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;

#[derive(Debug)]
pub struct Supervisor {
    tasks: JoinSet<(String, Result<(), String>)>,
    shutdown: CancellationToken,
}

impl Supervisor {
    /// Tasks get `shutdown` (or a child of it) to watch.
    pub fn new(shutdown: CancellationToken) -> Self {
        Self { tasks: JoinSet::new(), shutdown }
    }

    pub fn token(&self) -> CancellationToken {
        self.shutdown.clone()
    }

    pub fn spawn<F, E>(&mut self, name: &str, task: F)
    where
        F: Future<Output = Result<(), E>> + Send + 'static,
        E: std::fmt::Display,
    {
        let name = name.to_owned();
        self.tasks.spawn(async move { (name, task.await.map_err(|e| e.to_string())) });
    }

    /// Answers requests on `subject` (queue group `queue`) with `handler`, which gets the
    /// shared `state` and the parsed request, as a task of this supervisor.
    pub fn respond<S, Q, R, F, Fut>(
        &mut self,
        name: &str,
        client: &async_nats::Client,
        subject: &'static str,
        queue: &'static str,
        state: std::sync::Arc<S>,
        handler: F,
    ) where
        S: Send + Sync + 'static,
        Q: serde::de::DeserializeOwned + Send + 'static,
        R: serde::Serialize + Send + 'static,
        F: Fn(std::sync::Arc<S>, Result<Q, String>) -> Fut + Clone + Send + Sync + 'static,
        Fut: Future<Output = R> + Send + 'static,
    {
        let answer = move |request: Result<Q, String>| handler(state.clone(), request);
        self.spawn(name, crate::respond(client.clone(), subject, queue, self.shutdown.clone(), answer));
    }

    /// [`Supervisor::respond`] on a subject ending in `.*`: `handler` also gets the last token
    /// of each request's subject, the identity nats-server bound the asker to.
    pub fn respond_bound<S, Q, R, F, Fut>(
        &mut self,
        name: &str,
        client: &async_nats::Client,
        subject: String,
        queue: &'static str,
        state: std::sync::Arc<S>,
        handler: F,
    ) where
        S: Send + Sync + 'static,
        Q: serde::de::DeserializeOwned + Send + 'static,
        R: serde::Serialize + Send + 'static,
        F: Fn(std::sync::Arc<S>, String, Result<Q, String>) -> Fut + Clone + Send + Sync + 'static,
        Fut: Future<Output = R> + Send + 'static,
    {
        let answer = move |bound: String, request: Result<Q, String>| handler(state.clone(), bound, request);
        let shutdown = self.shutdown.clone();
        let client = client.clone();
        self.spawn(name, async move { crate::respond_bound(client, &subject, queue, shutdown, answer).await });
    }

    /// Waits for every task. The first failure cancels the rest and is returned.
    pub async fn wait(mut self) -> Result<(), SupervisorError> {
        let mut first_error = None;
        while let Some(joined) = self.tasks.join_next().await {
            let failure = match joined {
                Ok((_, Ok(()))) => None,
                Ok((task, Err(reason))) => Some(SupervisorError { task, reason }),
                Err(e) => Some(SupervisorError { task: "unknown".into(), reason: e.to_string() }),
            };
            if let Some(failure) = failure {
                tracing::error!(task = %failure.task, reason = %failure.reason, "task failed; stopping the others");
                self.shutdown.cancel();
                first_error.get_or_insert(failure);
            }
        }
        first_error.map_or(Ok(()), Err)
    }
}

#[derive(Debug, thiserror::Error)]
#[error("task {task} failed: {reason}")]
pub struct SupervisorError {
    pub task: String,
    pub reason: String,
}
