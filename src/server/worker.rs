//! Worker runtimes. `per_core` (the default, measured faster): one single-threaded tokio
//! runtime per thread, each accepting on its own SO_REUSEPORT socket, so a request never
//! changes thread. `shared`: one multi-threaded runtime with work stealing.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

use crate::sched::{cpu_share, set_worker_id};

/// How data-plane threads are organised.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum WorkerModel {
    PerCore,
    Shared,
}

impl WorkerModel {
    /// `AUTOLB_WORKER_MODEL=shared` selects the multi-threaded runtime (for comparisons).
    pub fn from_env() -> WorkerModel {
        match std::env::var("AUTOLB_WORKER_MODEL").as_deref() {
            Ok("shared") => WorkerModel::Shared,
            _ => WorkerModel::PerCore,
        }
    }
}

/// Handles to the data-plane runtimes, to spawn accept loops on.
pub struct Workers {
    pub model: WorkerModel,
    /// One handle per worker (`per_core`), or one handle (`shared`).
    pub handles: Vec<tokio::runtime::Handle>,
    threads: Vec<std::thread::JoinHandle<()>>,
    stop: Vec<tokio::sync::oneshot::Sender<()>>,
}

impl Workers {
    pub fn start(model: WorkerModel, count: usize) -> std::io::Result<Workers> {
        let count = count.max(1);
        let mut workers = Workers {
            model,
            handles: Vec::new(),
            threads: Vec::new(),
            stop: Vec::new(),
        };
        match model {
            WorkerModel::PerCore => {
                let share_cpu = cpu_share::enabled_from_env();
                for id in 0..count {
                    let rt = tokio::runtime::Builder::new_current_thread()
                        .enable_all()
                        .build()?;
                    if share_cpu {
                        rt.spawn(cpu_share::run());
                    }
                    workers.run_on_thread(rt, format!("autolb-worker-{id}"), Some(id))?;
                }
            }
            WorkerModel::Shared => {
                let next = Arc::new(AtomicUsize::new(0));
                let rt = tokio::runtime::Builder::new_multi_thread()
                    .worker_threads(count)
                    .thread_name("autolb-worker")
                    .on_thread_start(move || {
                        set_worker_id(next.fetch_add(1, Ordering::Relaxed) % count)
                    })
                    .enable_all()
                    .build()?;
                workers.run_on_thread(rt, "autolb-workers".into(), None)?;
            }
        }
        Ok(workers)
    }

    /// Drive `rt` on a new thread until `shutdown`.
    fn run_on_thread(
        &mut self,
        rt: tokio::runtime::Runtime,
        name: String,
        worker: Option<usize>,
    ) -> std::io::Result<()> {
        self.handles.push(rt.handle().clone());
        let (tx, rx) = tokio::sync::oneshot::channel::<()>();
        self.stop.push(tx);
        self.threads
            .push(std::thread::Builder::new().name(name).spawn(move || {
                if let Some(id) = worker {
                    set_worker_id(id);
                }
                rt.block_on(async {
                    let _ = rx.await;
                });
                rt.shutdown_timeout(std::time::Duration::from_secs(1));
            })?);
        Ok(())
    }

    /// Stop every runtime (tasks still running are dropped) and join the threads.
    pub fn shutdown(self) {
        for tx in self.stop {
            let _ = tx.send(());
        }
        for t in self.threads {
            let _ = t.join();
        }
    }
}
