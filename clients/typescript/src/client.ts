import * as grpc from "@grpc/grpc-js";
import * as protoLoader from "@grpc/proto-loader";
import { fileURLToPath } from "node:url";

import type { ProtoGrpcType as Admin } from "./generated/admin";
import type { ProtoGrpcType as Decisions } from "./generated/decisions";
import type { ProtoGrpcType as Feedback } from "./generated/feedback";
import type { ProtoGrpcType as Models } from "./generated/models";
import type { ProtoGrpcType as Retrieval } from "./generated/retrieval";
import type { ProtoGrpcType as Search } from "./generated/search";
import type { AdminServiceClient } from "./generated/ltrr/v1/AdminService";
import type { DecideRequest } from "./generated/ltrr/v1/DecideRequest";
import type { DecisionServiceClient } from "./generated/ltrr/v1/DecisionService";
import type { EvaluatePolicyRequest } from "./generated/ltrr/v1/EvaluatePolicyRequest";
import type { FeedbackServiceClient } from "./generated/ltrr/v1/FeedbackService";
import type { ModelServiceClient } from "./generated/ltrr/v1/ModelService";
import type { Namespace } from "./generated/ltrr/v1/Namespace";
import type { PolicySpec } from "./generated/ltrr/v1/PolicySpec";
import type { RetrievalServiceClient } from "./generated/ltrr/v1/RetrievalService";
import type { RewardEvent } from "./generated/ltrr/v1/RewardEvent";
import type { SearchServiceClient } from "./generated/ltrr/v1/SearchService";
import type { TunePolicyRequest } from "./generated/ltrr/v1/TunePolicyRequest";
import type * as v1 from "./types.js";

const PROTO_FILES = ["admin", "common", "decisions", "feedback", "models", "retrieval", "search"].map(
  (name) => `ltrr/v1/${name}.proto`,
);
// The package's own copy of the protos (scripts/copy-protos.mjs), next to dist/.
const PROTO_DIR = fileURLToPath(new URL("../../protos", import.meta.url));

/** Context features as plain objects: `{ user: { segment: "s1", age: 31 } }`. */
export type FeatureDict = Record<string, Record<string, string | number>>;

export interface RetryOptions {
  /** Attempts of an idempotent call in all (1: no retries). Default 4. */
  attempts?: number;
  /** The first backoff; it doubles each time, with jitter. Default 100 ms. */
  initialBackoffMs?: number;
  maxBackoffMs?: number;
}

export interface ClientOptions {
  /** Sent with every call as `authorization: Bearer <key>` (a server with `auth = "keys"`). */
  apiKey?: string;
  /** TLS: the CA to trust (PEM), and a client certificate and key for mutual TLS. */
  tls?: { rootCerts?: Buffer; certChain?: Buffer; privateKey?: Buffer };
  /** Deadline of each unary call. Default 10 s. */
  timeoutMs?: number;
  /** Retries with backoff of idempotent calls refused with UNAVAILABLE or RESOURCE_EXHAUSTED. */
  retry?: RetryOptions;
  /** Keepalive pings on an idle channel (grpc.keepalive_time_ms). Default 30 s; 0: none. */
  keepaliveMs?: number;
}

/**
 * `{ user: { segment: "s1", age: 31 } }` as the API's namespaces.
 *
 * A string is a category and a number a weight; anything else is refused here, naming it.
 */
export function namespaces(context: FeatureDict | undefined): Namespace[] {
  return Object.entries(context ?? {}).map(([name, features]) => ({
    name,
    features: Object.entries(features).map(([fname, value]) => {
      if (typeof value === "string") return { name: fname, str: value };
      if (typeof value === "number") return { name: fname, num: value };
      throw new TypeError(`context.${name}.${fname}: must be a string or a number, got ${typeof value}`);
    }),
  }));
}

type Unary<Req, Res> = (
  request: Req,
  metadata: grpc.Metadata,
  options: grpc.CallOptions,
  callback: grpc.requestCallback<Res>,
) => grpc.ClientUnaryCall;

const RETRIED = new Set([grpc.status.UNAVAILABLE, grpc.status.RESOURCE_EXHAUSTED]);

/** One client for every ltrr service, on one channel. Methods mirror the Python client's. */
export class LtrrClient {
  readonly decisions: DecisionServiceClient;
  readonly feedback: FeedbackServiceClient;
  readonly admin: AdminServiceClient;
  readonly retrieval: RetrievalServiceClient;
  readonly searchService: SearchServiceClient;
  readonly models: ModelServiceClient;
  private readonly timeoutMs: number;
  private readonly retry: Required<RetryOptions>;
  private readonly metadata: grpc.Metadata;

  constructor(target: string, options: ClientOptions = {}) {
    const definition = protoLoader.loadSync(PROTO_FILES, {
      keepCase: true, longs: String, enums: String, defaults: true, oneofs: true, includeDirs: [PROTO_DIR],
    });
    const proto = grpc.loadPackageDefinition(definition) as unknown as Admin & Decisions & Feedback & Models &
      Retrieval & Search;
    const credentials = options.tls
      ? grpc.credentials.createSsl(options.tls.rootCerts ?? null, options.tls.privateKey ?? null,
        options.tls.certChain ?? null)
      : grpc.credentials.createInsecure();
    const keepalive = options.keepaliveMs ?? 30_000;
    const channelOptions: grpc.ChannelOptions = keepalive > 0
      ? { "grpc.keepalive_time_ms": keepalive, "grpc.keepalive_timeout_ms": 10_000 }
      : {};
    const v = proto.ltrr.v1;
    this.decisions = new v.DecisionService(target, credentials, channelOptions);
    // Every service on the first one's channel.
    const shared = { ...channelOptions, channelOverride: this.decisions.getChannel() };
    this.feedback = new v.FeedbackService(target, credentials, shared);
    this.admin = new v.AdminService(target, credentials, shared);
    this.retrieval = new v.RetrievalService(target, credentials, shared);
    this.searchService = new v.SearchService(target, credentials, shared);
    this.models = new v.ModelService(target, credentials, shared);
    this.timeoutMs = options.timeoutMs ?? 10_000;
    this.retry = { attempts: 4, initialBackoffMs: 100, maxBackoffMs: 5_000, ...options.retry };
    this.metadata = new grpc.Metadata();
    if (options.apiKey) this.metadata.set("authorization", `Bearer ${options.apiKey}`);
  }

  close(): void {
    this.decisions.close();
  }

  private deadline(timeoutMs?: number): grpc.CallOptions {
    return { deadline: new Date(Date.now() + (timeoutMs ?? this.timeoutMs)) };
  }

  private call<Req, Res>(client: grpc.Client, method: Unary<Req, Res>, request: Req, idempotent = false,
    timeoutMs?: number): Promise<Res> {
    const once = () => new Promise<Res>((resolve, reject) => {
      method.call(client, request, this.metadata, this.deadline(timeoutMs), (err, res) => {
        if (err || res === undefined) reject(err ?? new Error("no response"));
        else resolve(res);
      });
    });
    if (!idempotent) return once();
    return this.withRetries(once);
  }

  private async withRetries<T>(attempt: () => Promise<T>): Promise<T> {
    let backoff = this.retry.initialBackoffMs;
    for (let n = 1; ; n++) {
      try {
        return await attempt();
      } catch (err) {
        const code = (err as grpc.ServiceError).code;
        if (n >= this.retry.attempts || !RETRIED.has(code)) throw err;
        // The server's pushback (RESOURCE_EXHAUSTED past a quota) says how long to wait.
        const pushback = Number((err as grpc.ServiceError).metadata?.get("grpc-retry-pushback-ms")?.[0] ?? NaN);
        const wait = Number.isFinite(pushback) ? pushback : backoff * (0.5 + Math.random());
        await new Promise((r) => setTimeout(r, wait));
        backoff = Math.min(backoff * 2, this.retry.maxBackoffMs);
      }
    }
  }

  // ------------------------------------------------------------------ decisions
  /** Chooses for one context (the policy's actions, or `actions`); `baseline`: your own choice,
   * which a policy in apprentice mode serves and learns from. */
  decide(policy: string, context?: FeatureDict,
    opts: { actions?: (string | [string, FeatureDict])[]; eventId?: string; slots?: number; baseline?: string } = {},
  ): Promise<v1.DecideResponse> {
    return this.call(this.decisions, this.decisions.Decide, decideRequest(policy, context, opts));
  }

  /** Many decisions on one stream, answered in order. */
  decideStream(requests: DecideRequest[]): Promise<v1.DecideResponse[]> {
    return collect(this.decisions.DecideStream(this.metadata), requests);
  }

  // ------------------------------------------------------------------ rewards
  /** One reward; resolves once it is committed. Idempotent on (eventId, rewardId): retried. */
  reportReward(eventId: string, value: number,
    opts: { rewardId?: string; engaged?: string[]; oracleBest?: number; oracleChosen?: number } = {},
  ): Promise<v1.RewardAck> {
    return this.call(this.feedback, this.feedback.ReportReward, rewardEvent(eventId, value, opts), true);
  }

  /** Batches of rewards on one stream; one ack batch per batch, in order, each once committed. */
  streamRewards(batches: RewardEvent[][]): Promise<v1.RewardAckBatch[]> {
    return collect(this.feedback.StreamRewards(this.metadata), batches.map((events) => ({ events })));
  }

  // ------------------------------------------------------------------ retrieval and search
  /** Candidates for a query from the plan the policy picks (or `fixedPlan`). */
  retrieve(policy: string, query: string,
    opts: { context?: FeatureDict; embedding?: number[]; fixedPlan?: Record<string, number>; limit?: number } = {},
  ): Promise<v1.RetrieveResponse> {
    return this.call(this.retrieval, this.retrieval.Retrieve, {
      policy, query, context: namespaces(opts.context), query_embedding: opts.embedding ?? [],
      fixed_plan: opts.fixedPlan ?? {}, limit: opts.limit ?? 0,
    });
  }

  /** The ranked page for a query: the policy's plan retrieves, the ranker orders (`order`: a baseline). */
  search(policy: string, query: string, opts: {
    context?: FeatureDict; userId?: string; pageSize?: number; embedding?: number[];
    fixedPlan?: Record<string, number>; order?: "ranker" | "fusion" | "popularity" | "model"; model?: string;
  } = {}): Promise<v1.SearchResponse> {
    return this.call(this.searchService, this.searchService.Search, {
      policy, query, context: namespaces(opts.context), user_id: opts.userId ?? "", page_size: opts.pageSize ?? 0,
      query_embedding: opts.embedding ?? [], fixed_plan: opts.fixedPlan ?? {},
      order: `PAGE_ORDER_${(opts.order ?? "ranker").toUpperCase()}` as "PAGE_ORDER_RANKER", model: opts.model ?? "",
    });
  }

  // ------------------------------------------------------------------ admin
  async listPolicies(): Promise<v1.Policy[]> {
    const res: { policies: v1.Policy[] } = await this.call(this.admin, this.admin.ListPolicies, {}, true);
    return res.policies;
  }

  getPolicy(name: string): Promise<v1.Policy> {
    return this.call(this.admin, this.admin.GetPolicy, { name }, true);
  }

  createPolicy(spec: PolicySpec): Promise<v1.Policy> {
    return this.call(this.admin, this.admin.CreatePolicy, { spec });
  }

  /** Changes the fields `updateMask` names (none: the fields `spec` sets; `["*"]`: all of them). */
  updatePolicy(spec: PolicySpec, updateMask: string[] = []): Promise<v1.UpdatePolicyResponse> {
    return this.call(this.admin, this.admin.UpdatePolicy, { spec, update_mask: { paths: updateMask } });
  }

  snapshot(name: string): Promise<v1.Snapshot> {
    return this.call(this.admin, this.admin.SnapshotPolicy, { name });
  }

  stats(name: string): Promise<v1.PolicyStats> {
    return this.call(this.admin, this.admin.GetPolicyStats, { name }, true);
  }

  /** Counterfactual estimates (EvaluatePolicy), once done; `progress` sees each update before. */
  evaluate(request: EvaluatePolicyRequest, progress?: (update: v1.EvaluatePolicyUpdate) => void,
    timeoutMs = 3_600_000): Promise<NonNullable<v1.EvaluatePolicyUpdate["result"]>> {
    return lastResult(this.admin.EvaluatePolicy(request, this.metadata, this.deadline(timeoutMs)), progress);
  }

  /** Candidate configurations replayed over the log and ranked (TunePolicy), once done. */
  tune(request: TunePolicyRequest, progress?: (update: v1.TunePolicyUpdate) => void,
    timeoutMs = 3_600_000): Promise<NonNullable<v1.TunePolicyUpdate["result"]>> {
    return lastResult(this.admin.TunePolicy(request, this.metadata, this.deadline(timeoutMs)), progress);
  }

  /** The policy's joined decisions as DSJSON lines (ExportEvents). */
  async exportDsjson(name: string, sinceMs = 0, untilMs = 0, timeoutMs = 3_600_000): Promise<string[]> {
    const lines: string[] = [];
    const stream = this.admin.ExportEvents({ name, since_ms: String(sinceMs), until_ms: String(untilMs) },
      this.metadata, this.deadline(timeoutMs));
    for await (const chunk of stream) lines.push(...(chunk as { lines: string[] }).lines);
    return lines;
  }

  createKey(roles: string[], opts: { tenant?: string; name?: string; subject?: string } = {}): Promise<v1.CreateKeyResponse> {
    return this.call(this.admin, this.admin.CreateKey, { roles, tenant: opts.tenant ?? "", name: opts.name ?? "",
      subject: opts.subject ?? "" });
  }

  async listKeys(): Promise<v1.ApiKey[]> {
    const res: { keys: v1.ApiKey[] } = await this.call(this.admin, this.admin.ListKeys, {}, true);
    return res.keys;
  }

  revokeKey(id: string): Promise<v1.ApiKey> {
    return this.call(this.admin, this.admin.RevokeKey, { id });
  }

  async audit(sinceMs = 0, limit = 0): Promise<v1.AuditEntry[]> {
    const res: { entries: v1.AuditEntry[] } = await this.call(this.admin, this.admin.ListAudit,
      { since_ms: String(sinceMs), limit }, true);
    return res.entries;
  }

  // ------------------------------------------------------------------ models
  xmrPredict(model: string, queries: string[], k = 10): Promise<v1.XmrPredictResponse> {
    return this.call(this.models, this.models.XmrPredict, { model, queries, k }, true);
  }

  autocomplete(model: string, prefix: string, opts: { previous?: string[]; sessionId?: string; k?: number } = {},
  ): Promise<v1.AutocompleteResponse> {
    return this.call(this.models, this.models.Autocomplete, { model, prefix, previous_queries: opts.previous ?? [],
      session_id: opts.sessionId ?? "", k: opts.k ?? 10 }, true);
  }

  listModels(name = ""): Promise<v1.ListModelsResponse> {
    return this.call(this.models, this.models.ListModels, { name }, true);
  }

  promoteModel(name: string, version: number, force = false): Promise<v1.PromoteModelResponse> {
    return this.call(this.models, this.models.PromoteModel, { name, version, force });
  }
}

function decideRequest(policy: string, context: FeatureDict | undefined,
  opts: { actions?: (string | [string, FeatureDict])[]; eventId?: string; slots?: number; baseline?: string },
): DecideRequest {
  return {
    policy, context: namespaces(context), event_id: opts.eventId ?? "", slots: opts.slots ?? 0,
    baseline_action_id: opts.baseline ?? "",
    actions: (opts.actions ?? []).map((a) => typeof a === "string"
      ? { id: a, features: [] }
      : { id: a[0], features: namespaces(a[1]) }),
  };
}

function rewardEvent(eventId: string, value: number,
  opts: { rewardId?: string; engaged?: string[]; oracleBest?: number; oracleChosen?: number }): RewardEvent {
  const ev: RewardEvent = { event_id: eventId, value, reward_id: opts.rewardId ?? "",
    engaged_item_ids: opts.engaged ?? [] };
  if (opts.oracleBest !== undefined) ev.oracle_best_value = opts.oracleBest;
  if (opts.oracleChosen !== undefined) ev.oracle_chosen_value = opts.oracleChosen;
  return ev;
}

/** Writes every request on a bidirectional stream, then gathers every answer until it ends. */
function collect<Req, Res>(stream: grpc.ClientDuplexStream<Req, Res>, requests: Req[]): Promise<Res[]> {
  return new Promise((resolve, reject) => {
    const out: Res[] = [];
    stream.on("data", (res: Res) => out.push(res));
    stream.on("error", reject);
    stream.on("end", () => resolve(out));
    for (const r of requests) stream.write(r);
    stream.end();
  });
}

async function lastResult<U extends { result?: R | null }, R>(stream: grpc.ClientReadableStream<U>,
  progress?: (update: U) => void): Promise<R> {
  let result: R | null | undefined;
  for await (const update of stream) {
    progress?.(update as U);
    if ((update as U).result) result = (update as U).result;
  }
  if (!result) throw new Error("the stream ended without a result");
  return result;
}
