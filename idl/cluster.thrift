// The wire contract between client, coordinator and compute nodes.
//
// Tensors travel as shape + little-endian float64 bytes in C order, never as
// list<double> (5x cheaper for the default model, 11x at 1 MB). Every error that
// crosses the wire is one of the exceptions below, with a message a person can act on.
// Regenerate the Python with scripts/gen_idl.sh after editing this file.

namespace py idl.gen

/**
 * The default bound on one task's work, epochs x rows x parameters (d*h + h + h*k + k):
 * some 20-50 minutes of one core, far beyond the default task timeout. A node
 * (--max-task-work) and a coordinator refuse bigger requests with InvalidRequest before
 * spending time on them; the seed's workload is ~1e8, the largest benchmark ~3e8.
 */
const i64 DEFAULT_MAX_TASK_WORK = 10000000000000

/** A dense float64 array: shape plus little-endian C-order bytes (8 * prod(shape)). */
struct Tensor {
  1: list<i64> shape,
  2: binary data,
}

/** How a node trains a task: the seed's full-batch descent unless batch_size > 0. */
struct TrainConfig {
  1: i32 epochs,
  2: double eta,
  3: i32 batch_size = 0,      // 0: full batch; step = eta * summed gradient
  4: double momentum = 0.0,
  5: i64 seed = 1,            // shuffles mini-batches; same seed, same bits
  // Input standardisation, applied by the node to every row before training:
  // x' = (x - feature_shift) * feature_scale. Empty lists: raw attributes (the seed's).
  6: list<double> feature_shift = [],
  7: list<double> feature_scale = [],
  // FedProx (Li et al. 2020): every step's gradient gains prox_mu * (w - w_round) for every
  // tensor, w_round being the weights the task started from; 0 = plain FedAvg training,
  // bit for bit. Relative to the SUMMED loss (the paper's mu times the rows per step).
  // Nodes refuse prox_mu < 0, > 1e6, non-finite or with prox_mu * eta > 1. A node older
  // than this field ignores it and trains with 0.
  8: double prox_mu = 0.0,
}

/** A training shard named by its content: the digest is sha256 of the file's bytes. */
struct ShardRef {
  1: string name,
  2: string digest,
  3: i64 n_rows,
  4: i64 n_bytes,
}

/** Where a task's time went, in seconds, as the node measured it. */
struct TaskTimings {
  1: double load_delay_s,     // simulated load (sleep) before training
  2: double compute_s,        // training itself
  3: double wait_s,           // queued on the node before it started
  4: double total_s,          // from request received to reply sent
}

/** One shard's training work, as sent by the coordinator to one node. */
struct ShardTask {
  1: string job_id,
  2: i32 round,
  3: i32 shard_index,
  4: ShardRef shard,
  5: list<Tensor> weights,    // W1 (d,h), b1 (h), W2 (h,k), b2 (k)
  6: TrainConfig config,
  7: bool may_decline,        // load-aware scheduling: a loaded node may reject
  // Bounds the task from the node's receipt (0 = none): no free worker within it answers
  // NodeBusy, the load delay is cut short, and training stops at the first step past it
  // with DeadlineExceeded; a budget spent before training stops it before its first step.
  8: double timeout_s,
  9: string token = "",       // the cluster's shared secret, as on every call
  // sha256 of the weights (idl.weights.weights_digest: each tensor's shape and bytes). With
  // `weights` empty the node trains from the weights it holds under this digest (put_weights
  // sent them once this round; if they are still on their way, it waits a short while, at
  // most half of timeout_s) or answers WeightsMissing; with `weights` given, it is unused.
  10: string weights_digest = "",
  // The attempt's name on the node (the coordinator makes one per attempt; at most 128
  // characters): cancel(task_id) takes the attempt back while it has not started training.
  // "" = not cancellable.
  11: string task_id = "",
}

/** A node's answer: the weights delta and what it learnt on the way. */
struct TaskResult {
  1: list<Tensor> delta,      // new weights minus given weights, same order
  2: i64 n_samples,
  3: double train_loss,       // mean cross-entropy on the shard after training
  4: double train_error,      // error rate on the shard after training
  5: TaskTimings timings,
  6: string node,             // host:port of the node that trained it
}

/** What a node says about its own load, for load-aware scheduling and status. */
struct NodeLoad {
  1: i32 tasks_in_flight,
  2: double recent_service_s, // moving average of accepted tasks' total time
  3: double load_probability,
  4: i64 tasks_done,
  5: i64 tasks_declined,     // turned away as loaded or without a free worker
  6: i64 shards_cached,
}

/** The whole of one round, sent by the client to a coordinator. */
struct RoundRequest {
  1: string job_id,
  2: i32 round,
  3: list<Tensor> weights,
  4: list<ShardRef> shards,
  5: TrainConfig config,
  6: string policy = "",      // "" = the coordinator's own policy
  7: double deadline_s,       // the round fails with NoNodesAvailable after this long
  8: string token = "",       // the cluster's shared secret, as on every call
}

/** How one shard task went: who ran it, how often it was tried, and how long it took. */
struct TaskRecord {
  1: i32 shard_index,
  2: string shard,
  3: string node,             // the node whose result was used
  4: i32 attempts,            // tries of the runner whose result was used, declines included
  5: list<string> failures,   // "host:port reason" per failed attempt (declines are not failures)
  6: TaskTimings timings,
  7: double start_s,          // since the round started at the coordinator
  8: double end_s,
  9: i64 n_samples,
  10: double train_loss,
  11: double train_error,
  12: i32 declined = 0,       // attempts a loaded node declined (load-aware): it stays healthy
}

/** A round's per-shard results, in shard order whatever order they arrived in. */
struct RoundResult {
  1: list<TaskResult> results,
  2: list<TaskRecord> records,
  3: double wall_s,
  4: string coordinator,
  5: string policy,
}

struct NodeStatus {
  1: string address,
  2: bool alive,
  3: double load_probability,
  4: i32 tasks_in_flight,
  5: i64 tasks_done,
  6: i64 failures,
  7: double last_seen_s_ago,  // -1 when never seen
  8: double recent_service_s,
}

struct ClusterStatus {
  1: list<NodeStatus> nodes,
  2: string policy,
  3: map<string, i64> counters,
}

/** A model the cluster serves: the client's .npz file, named by the sha256 of its bytes. */
struct ModelInfo {
  1: string digest,
  2: string name,             // as the client called it (its file name)
  3: i32 n_features,
  4: i32 n_classes,
  5: i32 members,             // 1: one MLP; more: an ensemble averaging their probabilities
  6: list<string> class_names,
  7: i64 n_bytes,
}

/** Rows to label with a model the cluster holds. */
struct PredictRequest {
  1: string model,            // the model's digest (ModelInfo.digest)
  2: Tensor rows,             // (n, d) float64 raw attributes; the model standardises them
  3: bool probabilities = false,
  4: double deadline_s = 10.0,  // the answer comes within this, or DeadlineExceeded
  5: string token = "",
}

/** One label per row (class index) and, when asked for, the class probabilities (n, k). */
struct Prediction {
  1: list<i32> labels,
  2: Tensor probabilities,    // shape [] when not asked for
  3: string node,             // host:port of the node that ran the batch
  4: i32 batch_rows,          // rows in the batch this request rode in (1 request: its own)
}

/** A model scored on labelled data: counts are exact, so scores add across shards. */
struct Evaluation {
  1: i64 n_rows,
  2: i64 n_errors,
  3: double summed_loss,      // cross-entropy summed over the rows (mean = summed / n_rows)
  4: i32 n_classes,
  5: list<i64> confusion,     // n_classes x n_classes, row-major: [true class][predicted]
}

/** Score a model on shards the coordinator holds (put_shard), in shard order. */
struct EvaluateRequest {
  1: string model,
  2: list<ShardRef> shards,
  3: double deadline_s = 60.0,
  4: string token = "",
}

exception InvalidRequest { 1: string message }
exception NodeBusy { 1: string message, 2: double retry_after_s }
exception ShardMissing { 1: string message, 2: string digest }
exception NoNodesAvailable { 1: string message }
exception DatasetError { 1: string message }
/** The call lacks the cluster's shared secret, or carries a wrong one. */
exception Unauthorized { 1: string message }
/** A task ran out of its time budget (budget_s seconds): the node stopped training it. */
exception DeadlineExceeded { 1: string message, 2: double budget_s }
/** The model (by digest) is not held here: put_model it, then call again. */
exception ModelMissing { 1: string message, 2: string digest }
/** The node does not hold the round's weights by this digest: put_weights them, then retry. */
exception WeightsMissing { 1: string message, 2: string digest }
/** The task was taken back with cancel() before it started training: it ran nothing. */
exception TaskCancelled { 1: string message }
/** The prediction queue is full: try again after retry_after_s. */
exception Overloaded { 1: string message, 2: double retry_after_s }

// With a token configured, every call but ping() must carry it (the `token` arguments and
// ShardTask/RoundRequest.token); ping() stays open for health probes and reveals nothing.

/** The calls every server answers alike: a health probe, and which shards it lacks. */
service ShardHolder {
  bool ping(),
  /** Which of these digests the server lacks (a node: neither cached nor in its data dir). */
  list<string> missing_shards(1: list<string> digests, 2: string token = "")
      throws (1: Unauthorized denied),
}

service ComputeNode extends ShardHolder {
  NodeLoad load(1: string token = "") throws (1: Unauthorized denied),
  /** Cache a shard's bytes; the node checks they hash to the digest. */
  void put_shard(1: string digest, 2: binary data, 3: string token = "")
      throws (1: InvalidRequest bad, 2: DatasetError dataset, 3: Unauthorized denied),
  TaskResult train(1: ShardTask task)
      throws (1: InvalidRequest bad, 2: NodeBusy busy, 3: ShardMissing missing,
              4: DatasetError dataset, 5: Unauthorized denied, 6: DeadlineExceeded late,
              7: WeightsMissing weights_missing, 8: TaskCancelled cancelled),
  /**
   * Take back a task (by ShardTask.task_id) that this node accepted but has not started
   * training: queued for a worker, or sleeping its load delay. Its train call answers
   * TaskCancelled. True when it is cancelled so (it will never run; a repeated cancel
   * answers true again while the node still holds the task); false when it has started,
   * ended or was never received: a no-op, never an error. Bounded: it waits for nothing.
   */
  bool cancel(1: string task_id, 2: string token = "") throws (1: Unauthorized denied),
  /**
   * Hold a round's weights under their digest (checked), so that every task of the round
   * on this node refers to them by ShardTask.weights_digest instead of carrying them. A node
   * keeps the latest weights it was given, and older ones while its tasks still use them.
   */
  void put_weights(1: string digest, 2: list<Tensor> weights, 3: string token = "")
      throws (1: InvalidRequest bad, 2: Unauthorized denied),
  /** Which of these model digests the node lacks. */
  list<string> missing_models(1: list<string> digests, 2: string token = "")
      throws (1: Unauthorized denied),
  /** Cache a model file's bytes; the node checks the digest and that it is a model. */
  void put_model(1: string digest, 2: binary data, 3: string token = "")
      throws (1: InvalidRequest bad, 2: Unauthorized denied),
  /** Label a batch of rows (the coordinator's micro-batch). */
  Prediction predict(1: PredictRequest request)
      throws (1: InvalidRequest bad, 2: ModelMissing missing, 3: NodeBusy busy,
              4: Unauthorized denied, 5: DeadlineExceeded late),
  /** Score the model on the shards (usually one: the coordinator spreads them). */
  Evaluation evaluate(1: EvaluateRequest request)
      throws (1: InvalidRequest bad, 2: ModelMissing missing, 3: ShardMissing shard,
              4: DatasetError dataset, 5: Unauthorized denied, 6: DeadlineExceeded late),
}

service Coordinator extends ShardHolder {
  ClusterStatus status(1: string token = "") throws (1: Unauthorized denied),
  void put_shard(1: string digest, 2: binary data, 3: string token = "")
      throws (1: InvalidRequest bad, 2: Unauthorized denied),
  RoundResult run_round(1: RoundRequest request)
      throws (1: InvalidRequest bad, 2: NoNodesAvailable none, 3: ShardMissing missing,
              4: DatasetError dataset, 5: Unauthorized denied, 6: DeadlineExceeded late),
  /** A node announces itself (and keeps doing so as its heartbeat). */
  void register_node(1: string host, 2: i32 port, 3: string token = "")
      throws (1: InvalidRequest bad, 2: Unauthorized denied),
  /** Hold a model file (checked); its digest names it in predict and evaluate. */
  ModelInfo put_model(1: binary data, 2: string name, 3: string token = "")
      throws (1: InvalidRequest bad, 2: Unauthorized denied),
  /** Which of these model digests the coordinator lacks (so a client uploads only once). */
  list<string> missing_models(1: list<string> digests, 2: string token = "")
      throws (1: Unauthorized denied),
  list<ModelInfo> list_models(1: string token = "") throws (1: Unauthorized denied),
  /** Label rows; concurrent requests for a model are micro-batched onto nodes. */
  Prediction predict(1: PredictRequest request)
      throws (1: InvalidRequest bad, 2: ModelMissing missing, 3: Overloaded overloaded,
              4: NoNodesAvailable none, 5: Unauthorized denied, 6: DeadlineExceeded late),
  /** Score a model on shards the coordinator holds; scores summed in shard order. */
  Evaluation evaluate(1: EvaluateRequest request)
      throws (1: InvalidRequest bad, 2: ModelMissing missing, 3: ShardMissing shard,
              4: NoNodesAvailable none, 5: DatasetError dataset, 6: Unauthorized denied,
              7: DeadlineExceeded late),
}
