//! Leader election through a `coordination.k8s.io` Lease (the `kube-lease-manager` crate):
//! with several operator replicas, exactly one reconciles and writes. A lease has no fencing,
//! so a paused leader may wake after losing it: the writes themselves are conditional (see
//! `keys` and `publish`), so such a stale write fails instead of acting twice.

use kube_lease_manager::LeaseManagerBuilder;
use tokio::sync::watch;

/// How leadership is decided.
#[derive(Debug, Clone)]
pub struct Election {
    /// The Lease's name.
    pub lease_name: String,
    /// Seconds a leader holds the lease without renewing it.
    pub lease_duration: u64,
    /// This replica's identity (the pod name).
    pub identity: String,
}

/// Starts taking part in the election; the receiver says whether this replica leads now.
/// Without an election (`None`) this replica always leads.
pub async fn start(
    client: kube::Client,
    namespace: &str,
    election: Option<Election>,
) -> anyhow::Result<watch::Receiver<bool>> {
    let Some(e) = election else {
        let (tx, rx) = watch::channel(true);
        // The sender lives as long as the process: leadership never changes.
        tokio::spawn(async move {
            let _tx = tx;
            std::future::pending::<()>().await;
        });
        return Ok(rx);
    };
    let grace = (e.lease_duration / 3).clamp(1, e.lease_duration.saturating_sub(1).max(1));
    let manager = LeaseManagerBuilder::new(client, &e.lease_name)
        .with_namespace(namespace)
        .with_identity(&e.identity)
        .with_duration(e.lease_duration)
        .with_grace(grace)
        .build()
        .await
        .map_err(|err| anyhow::anyhow!("cannot use the Lease {}: {err}", e.lease_name))?;
    let (rx, task) = manager.watch().await;
    tokio::spawn(async move {
        if let Ok(Err(err)) = task.await {
            tracing::error!(error = %err, "leader election stopped");
        }
    });
    Ok(rx)
}
