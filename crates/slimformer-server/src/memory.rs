//! The memory budget. Under a memory limit (the cgroup's, as a container or
//! `systemd-run -p MemoryMax=` sets it, or `--memory-limit`), the server plans at start
//! what it needs whatever the traffic: the process as loaded, a second copy of every
//! model's weights (a reload loads the new version beside the old), and each model's
//! largest forward pass (`--max-batch-tokens` padded tokens; lowered, so that passes
//! are split smaller, when the limit is tight). What is left is the budget of requests:
//! each reserves what its hidden states and its answer will hold before it is queued,
//! and keeps it until its answer has been sent. A request that finds too little free
//! gets 429 and retries; one larger than the whole budget gets 413. The kernel's
//! out-of-memory killer is never the one that says no.

use crate::metrics::Metrics;
use axum::body::{Body, Bytes};
use axum::response::Response;
use slimformer::memory::MemoryShape;
use std::path::Path;
use std::pin::Pin;
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};

/// Reservations are counted in KiB (a semaphore counts permits, not bytes).
const UNIT: u64 = 1024;
/// Kept free of every plan: the allocator's slack, thread stacks, what the estimates miss.
const MARGIN_FRACTION: f64 = 0.10;
/// cgroup v1 writes "no limit" as a number near 2^63.
const NO_LIMIT_ABOVE: u64 = 1 << 60;

/// The memory limit of this process's cgroup (v2 `memory.max`, else v1
/// `memory.limit_in_bytes`), if it has one.
pub fn cgroup_limit() -> Option<u64> {
    let groups = std::fs::read_to_string("/proc/self/cgroup").ok()?;
    let read = |path: &Path| -> Option<u64> {
        let text = std::fs::read_to_string(path).ok()?;
        let value = text.trim().parse::<u64>().ok()?; // "max": no limit
        (value < NO_LIMIT_ABOVE).then_some(value)
    };
    for line in groups.lines() {
        let mut fields = line.splitn(3, ':');
        let (_, controllers, path) = (fields.next()?, fields.next()?, fields.next()?);
        let path = path.trim_start_matches('/');
        let candidates = if controllers.is_empty() {
            // v2; inside a container's cgroup namespace the group is the mount's root.
            vec![
                Path::new("/sys/fs/cgroup").join(path).join("memory.max"),
                Path::new("/sys/fs/cgroup/memory.max").to_path_buf(),
            ]
        } else if controllers.split(',').any(|c| c == "memory") {
            vec![
                Path::new("/sys/fs/cgroup/memory")
                    .join(path)
                    .join("memory.limit_in_bytes"),
                Path::new("/sys/fs/cgroup/memory/memory.limit_in_bytes").to_path_buf(),
            ]
        } else {
            continue;
        };
        if let Some(limit) = candidates.iter().find_map(|p| read(p)) {
            return Some(limit);
        }
    }
    None
}

/// Returns the heap's free pages to the system. The process keeps the memory it frees,
/// as back-to-back forward passes want (see the CLI's allocator policy), so its resident
/// size would otherwise be the highest it ever was: after each hot reload, the old
/// weights' pages; after a burst of long requests, theirs.
pub fn return_freed_memory() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: malloc_trim only gives free pages of the heap back to the system.
    unsafe {
        libc::malloc_trim(0);
    }
}

/// How often a serving process gives its free heap pages back: often enough that the
/// resident size follows the traffic rather than its highest burst, rarely enough that
/// faulting the pages in again stays small beside the forward passes that touch them.
/// Every 60 s, a 30-minute soak's resident size (median per 5 minutes) sat 16–56 MB
/// higher than every 5 s, at the same throughput: with one heap and mmap off, a minute
/// of long requests touches freed pages all over the fragmented heap, and they stayed
/// resident until the next trim (docs/RELIABILITY.md).
pub const RETURN_FREED_EVERY: std::time::Duration = std::time::Duration::from_secs(5);

/// Starts the thread that calls [`return_freed_memory`] every [`RETURN_FREED_EVERY`].
pub fn spawn_returner() {
    let _ = std::thread::Builder::new()
        .name("slimformer-trim".into())
        .spawn(|| loop {
            std::thread::sleep(RETURN_FREED_EVERY);
            return_freed_memory();
        });
}

/// The process's resident memory now.
pub fn resident_bytes() -> Option<u64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = status.lines().find(|l| l.starts_with("VmRSS:"))?;
    let kib: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kib * 1024)
}

/// The length planned for a model without a position limit (XLNet); a longer input
/// reserves its own forward pass (see `extra_forward_bytes`).
pub const PLANNED_LEN_WITHOUT_LIMIT: usize = 512;

/// The forward pass of a model with quadratic attention over inputs longer than the
/// plan's length: what the plan did not set aside.
pub fn extra_forward_bytes(shape: &MemoryShape, planned_len: u64, rows: u64, longest: u64) -> u64 {
    if longest <= planned_len {
        0
    } else {
        shape.forward_bytes(rows * longest, longest)
    }
}

/// One model as the plan sees it.
#[derive(Debug, Clone, Copy)]
pub struct PlannedModel {
    pub shape: MemoryShape,
    /// Its longest input in tokens.
    pub max_len: u64,
}

/// What the start of the server set aside, and the budget left for requests.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct Plan {
    pub limit_bytes: u64,
    pub resident_at_start_bytes: u64,
    pub reload_headroom_bytes: u64,
    pub forward_bytes: u64,
    pub margin_bytes: u64,
    pub request_budget_bytes: u64,
    /// `--max-batch-tokens`, or the lower value the limit allows.
    pub max_batch_tokens: usize,
}

/// Fits the models under `limit`. The forward passes' token budget is halved (never
/// below one longest input) until the largest request the server takes (`max_inputs`
/// longest inputs answered token by token) fits beside them; smaller passes cost
/// little speed, a budget too small for a full request costs 429s. At the floor, a
/// request of one longest input must fit, or the models do not fit the limit.
pub fn plan(
    limit: u64,
    resident: u64,
    models: &[PlannedModel],
    max_batch_tokens: usize,
    max_inputs: usize,
) -> Result<Plan, String> {
    let reload_headroom: u64 = models.iter().map(|m| m.shape.weights).sum();
    let margin = (limit as f64 * MARGIN_FRACTION) as u64;
    let longest = models.iter().map(|m| m.max_len).max().unwrap_or(1) as usize;
    let smallest_request = models
        .iter()
        .map(|m| one_longest_input(&m.shape, m.max_len))
        .max()
        .unwrap_or(0);
    let largest_request = smallest_request * max_inputs as u64;
    let forward = |tokens: usize| -> u64 {
        models
            .iter()
            .map(|m| {
                m.shape
                    .forward_bytes(tokens as u64, m.max_len.min(tokens as u64))
            })
            .sum()
    };
    let mut tokens = max_batch_tokens;
    loop {
        let fixed = resident + reload_headroom + forward(tokens) + margin;
        let budget = limit.saturating_sub(fixed);
        let at_floor = tokens <= longest;
        if budget >= largest_request || (at_floor && budget >= smallest_request) {
            return Ok(Plan {
                limit_bytes: limit,
                resident_at_start_bytes: resident,
                reload_headroom_bytes: reload_headroom,
                forward_bytes: forward(tokens),
                margin_bytes: margin,
                request_budget_bytes: limit - fixed,
                max_batch_tokens: tokens,
            });
        }
        if at_floor {
            return Err(format!(
                "the memory limit of {} is too small for these models: they need {} \
                 (loaded {}, a reload's second copy of the weights {}, forward passes of {} \
                 tokens {}, a margin of {}, one request of the longest input {}); raise the \
                 limit (--memory-limit, or the container's) or serve fewer models",
                mb(limit),
                mb(fixed + smallest_request),
                mb(resident),
                mb(reload_headroom),
                tokens,
                mb(forward(tokens)),
                mb(margin),
                mb(smallest_request),
            ));
        }
        tokens = (tokens / 2).max(longest);
    }
}

/// The reservation of one request of a single input of `len` tokens answered
/// token by token (the largest answer per token, `/embed_all`).
fn one_longest_input(shape: &MemoryShape, len: u64) -> u64 {
    request_bytes(shape, len, len * shape.hidden)
}

/// What a request holds from its queueing to its answer's last byte: its encodings,
/// the hidden states of its tokens, and its answer of `answer_values` numbers.
pub fn request_bytes(shape: &MemoryShape, tokens: u64, answer_values: u64) -> u64 {
    // ids, type ids, attention mask, word ids and character offsets.
    const ENCODING_BYTES_PER_TOKEN: u64 = 32;
    tokens * ENCODING_BYTES_PER_TOKEN
        + shape.hidden_bytes(tokens)
        + answer_values * slimformer::memory::ANSWER_BYTES_PER_VALUE
}

pub fn mb(bytes: u64) -> String {
    format!("{:.0} MB", bytes as f64 / 1e6)
}

/// The requests' share of memory.
pub struct MemoryBudget {
    pub plan: Plan,
    free: Arc<Semaphore>,
    metrics: Arc<Metrics>,
}

/// Why a request could not reserve its memory.
pub enum Refusal {
    /// More than the whole budget: it can never run.
    TooLarge { needs: u64, budget: u64 },
    /// More than is free now: it can run later.
    Busy { needs: u64, free: u64 },
}

impl MemoryBudget {
    pub fn new(plan: Plan, metrics: Arc<Metrics>) -> Self {
        let units = (plan.request_budget_bytes / UNIT) as usize;
        metrics
            .memory_budget_bytes
            .store(plan.request_budget_bytes, Ordering::Relaxed);
        MemoryBudget {
            plan,
            free: Arc::new(Semaphore::new(units.min(Semaphore::MAX_PERMITS))),
            metrics,
        }
    }

    /// Reserves `bytes` now, or says why not.
    pub fn reserve(&self, bytes: u64) -> Result<Reservation, Refusal> {
        let units = bytes.div_ceil(UNIT).max(1);
        let budget = self.plan.request_budget_bytes;
        if units * UNIT > budget {
            return Err(Refusal::TooLarge {
                needs: bytes,
                budget,
            });
        }
        match self.free.clone().try_acquire_many_owned(units as u32) {
            Ok(permit) => {
                self.metrics
                    .memory_reserved_bytes
                    .fetch_add(units * UNIT, Ordering::Relaxed);
                Ok(Reservation {
                    _permit: permit,
                    bytes: units * UNIT,
                    metrics: self.metrics.clone(),
                })
            }
            Err(_) => Err(Refusal::Busy {
                needs: bytes,
                free: self.free.available_permits() as u64 * UNIT,
            }),
        }
    }
}

/// Memory a request holds; given back when dropped.
pub struct Reservation {
    _permit: OwnedSemaphorePermit,
    bytes: u64,
    metrics: Arc<Metrics>,
}

impl Drop for Reservation {
    fn drop(&mut self) {
        self.metrics
            .memory_reserved_bytes
            .fetch_sub(self.bytes, Ordering::Relaxed);
    }
}

/// The reservations of the request being handled. The request's middleware makes one;
/// the handler adds to it; the answer's body keeps it until its last byte is sent, or
/// until the client has gone.
#[derive(Clone, Default)]
pub struct Held(Arc<Mutex<Vec<Reservation>>>);

tokio::task_local! {
    static HELD: Held;
}

impl Held {
    /// Runs `f` (a request's handling) with this holder as the request's.
    pub async fn scope<F: std::future::Future>(&self, f: F) -> F::Output {
        HELD.scope(self.clone(), f).await
    }

    /// Keeps `reservation` until the request's answer is sent (dropped at once
    /// outside a request).
    pub fn keep(reservation: Reservation) {
        let _ = HELD.try_with(|held| {
            held.0
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .push(reservation)
        });
    }

    fn is_empty(&self) -> bool {
        self.0.lock().unwrap_or_else(|e| e.into_inner()).is_empty()
    }

    /// The response with its body holding the reservations.
    pub fn attach(self, response: Response) -> Response {
        if self.is_empty() {
            return response;
        }
        let (parts, body) = response.into_parts();
        Response::from_parts(parts, Body::new(HoldingBody { body, _held: self }))
    }
}

struct HoldingBody {
    body: Body,
    _held: Held,
}

impl http_body::Body for HoldingBody {
    type Data = Bytes;
    type Error = axum::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<http_body::Frame<Bytes>, axum::Error>>> {
        Pin::new(&mut self.body).poll_frame(cx)
    }

    fn is_end_stream(&self) -> bool {
        self.body.is_end_stream()
    }

    fn size_hint(&self) -> http_body::SizeHint {
        self.body.size_hint()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn minilm() -> PlannedModel {
        PlannedModel {
            shape: MemoryShape {
                hidden: 384,
                intermediate: 1536,
                heads: 12,
                quadratic_attention: false,
                weights: 91_000_000,
            },
            max_len: 512,
        }
    }

    const MB: u64 = 1_000_000;

    #[test]
    fn a_roomy_limit_keeps_the_batch_tokens_and_leaves_the_rest_to_requests() {
        let plan = plan(4_000 * MB, 180 * MB, &[minilm()], 16_384, 32).unwrap();
        assert_eq!(plan.max_batch_tokens, 16_384);
        let fixed = 180 * MB + 91 * MB + 16_384 * 16_896 + 400 * MB;
        assert_eq!(plan.request_budget_bytes, 4_000 * MB - fixed);
    }

    #[test]
    fn a_tight_limit_splits_forward_passes_smaller() {
        let plan = plan(600 * MB, 180 * MB, &[minilm()], 16_384, 32).unwrap();
        assert!(plan.max_batch_tokens < 16_384 && plan.max_batch_tokens >= 512);
        assert!(plan.request_budget_bytes >= one_longest_input(&minilm().shape, 512));
    }

    #[test]
    fn a_limit_below_the_models_is_an_error_that_says_what_they_need() {
        let e = plan(250 * MB, 180 * MB, &[minilm()], 16_384, 32).unwrap_err();
        assert!(
            e.contains("too small") && e.contains("raise the limit"),
            "{e}"
        );
    }

    #[test]
    fn reservations_are_refused_when_busy_or_too_large_and_given_back() {
        let p = plan(600 * MB, 180 * MB, &[minilm()], 16_384, 32).unwrap();
        let budget = MemoryBudget::new(p.clone(), Arc::new(Metrics::default()));
        let all = p.request_budget_bytes;
        assert!(matches!(
            budget.reserve(all + UNIT),
            Err(Refusal::TooLarge { .. })
        ));
        let half = budget.reserve(all / 2 + UNIT).ok().unwrap();
        assert!(matches!(
            budget.reserve(all / 2 + UNIT),
            Err(Refusal::Busy { .. })
        ));
        drop(half);
        assert!(budget.reserve(all / 2 + UNIT).is_ok());
    }
}
