//! The batching queue of one model: requests from any number of clients are packed
//! into forward passes under a token budget (padded length × texts) and run on the
//! model's own inference thread, off the async runtime, with the model's own
//! compute threads. Own threads, not a share of one pool: a pool runs each parallel
//! operation to its end before the next one waiting, so a short request for one
//! model would wait out, operation by operation, the long batch of another (p99
//! 1.8 s instead of 4 ms in the measurements of docs/SERVING.md); with a pool each,
//! the operating system shares the cores between the busy models. Jobs keep the engine they were tokenized for, so
//! a reload never mixes versions in a batch, and a job whose client has gone is
//! dropped before any work is done for it.

use crate::engine::{Engine, Task, TaskOutput};
use crate::metrics::Metrics;
use slimformer::batching::BatchLimits;
use slimformer::tokenize::Encoded;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::mpsc;
use std::sync::{Arc, Mutex};
use std::time::Instant;
use tokio::sync::oneshot;

pub type Reply = std::result::Result<Vec<TaskOutput>, String>;

pub struct Job {
    pub engine: Arc<Engine>,
    pub task: Task,
    pub texts: Vec<Encoded>,
    pub reply: oneshot::Sender<Reply>,
}

impl Job {
    fn padded_tokens(&self) -> (usize, usize) {
        let longest = self.texts.iter().map(|t| t.ids.len()).max().unwrap_or(0);
        (self.texts.len(), longest)
    }
}

pub struct Batcher {
    sender: Mutex<Option<mpsc::Sender<Job>>>,
    /// Padded tokens one forward pass may take (lowered by the memory plan).
    max_batch_tokens: Arc<AtomicUsize>,
}

impl Batcher {
    /// Starts the inference thread of the model named `model` (its metrics label).
    pub fn start(max_batch_tokens: usize, metrics: Arc<Metrics>, model: String) -> Batcher {
        let (tx, rx) = mpsc::channel::<Job>();
        let budget = Arc::new(AtomicUsize::new(max_batch_tokens));
        let max_batch_tokens = budget.clone();
        // As many compute threads as the process's pool (`--threads`).
        let threads = rayon::current_num_threads();
        std::thread::Builder::new()
            .name("slimformer-inference".into())
            .spawn(move || {
                let pool = rayon::ThreadPoolBuilder::new()
                    .num_threads(threads)
                    .thread_name(|i| format!("slimformer-compute-{i}"))
                    .build();
                match pool {
                    Ok(pool) => pool.install(|| run(rx, &budget, &metrics, &model)),
                    Err(e) => {
                        tracing::warn!(%model, error = %e, "no compute threads of its own: sharing the process's");
                        run(rx, &budget, &metrics, &model)
                    }
                }
            })
            .expect("spawn the inference thread");
        Batcher {
            sender: Mutex::new(Some(tx)),
            max_batch_tokens,
        }
    }

    /// Lowers (or raises) the tokens of the forward passes to come.
    pub fn set_max_batch_tokens(&self, tokens: usize) {
        self.max_batch_tokens
            .store(tokens.max(1), Ordering::Relaxed);
    }

    /// Queues a job; false when the queue has closed (shutting down).
    pub fn submit(&self, job: Job) -> bool {
        let guard = self.sender.lock().unwrap_or_else(|e| e.into_inner());
        match guard.as_ref() {
            Some(tx) => tx.send(job).is_ok(),
            None => false,
        }
    }

    /// Stops the inference thread once the queued jobs are done.
    pub fn close(&self) {
        self.sender.lock().unwrap_or_else(|e| e.into_inner()).take();
    }
}

fn run(rx: mpsc::Receiver<Job>, max_batch_tokens: &AtomicUsize, metrics: &Metrics, model: &str) {
    let mut pending: Option<Job> = None;
    loop {
        let first = match pending.take() {
            Some(job) => job,
            None => match rx.recv() {
                Ok(job) => job,
                Err(_) => return,
            },
        };
        metrics.queue_add(model, -1);
        let budget = max_batch_tokens.load(Ordering::Relaxed);
        let mut batch = vec![first];
        let (mut n, mut longest) = batch[0].padded_tokens();
        while let Ok(job) = rx.try_recv() {
            metrics.queue_add(model, -1);
            let (jn, jl) = job.padded_tokens();
            let fits = (n + jn) * longest.max(jl) <= budget;
            if fits && Arc::ptr_eq(&job.engine, &batch[0].engine) {
                n += jn;
                longest = longest.max(jl);
                batch.push(job);
            } else {
                metrics.queue_add(model, 1);
                pending = Some(job);
                break;
            }
        }
        run_batch(batch, budget, metrics, model);
    }
}

fn run_batch(batch: Vec<Job>, budget: usize, metrics: &Metrics, model: &str) {
    let live: Vec<Job> = batch.into_iter().filter(|j| !j.reply.is_closed()).collect();
    if live.is_empty() {
        return;
    }
    let engine = live[0].engine.clone();
    let texts: Vec<&Encoded> = live.iter().flat_map(|j| j.texts.iter()).collect();
    let limits = BatchLimits {
        max_tokens: budget,
        max_rows: usize::MAX,
    };
    let started = Instant::now();
    // The same length-sorted packing as the batch commands: a batch of mixed
    // lengths does not pay for padding every text to the longest.
    let hidden = engine.pipeline.run_packed(&texts, limits, |group, hidden| {
        let longest = group.last().map_or(0, |t| t.ids.len());
        metrics.observe_batch(model, group.len(), group.len() * longest);
        Ok(hidden)
    });
    metrics.observe_seconds(model, started.elapsed().as_secs_f64());
    let mut hidden = hidden.into_iter();
    for job in live {
        let mine: Result<Vec<_>, String> = hidden.by_ref().take(job.texts.len()).collect();
        let refs: Vec<&Encoded> = job.texts.iter().collect();
        let out = mine.and_then(|states| {
            engine
                .finish(&job.task, &refs, states)
                .map_err(|e| e.to_string())
        });
        let _ = job.reply.send(out);
    }
}
