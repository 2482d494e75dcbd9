/**
 * A TypeScript client for ltrr: decisions, rewards (acknowledged once committed), retrieval,
 * search, policy administration and trained models, over gRPC (`@grpc/grpc-js`).
 *
 * ```ts
 * import { LtrrClient } from "@ltrr/client";
 *
 * const client = new LtrrClient("localhost:50051");
 * const d = await client.decide("demo", { user: { segment: "s1" } });
 * await client.reportReward(d.event_id, 1.0);          // resolves once the reward is committed
 * const page = await client.search("retrieval", "mellow jazz", { userId: "u1" });
 * client.close();
 * ```
 */
export { LtrrClient, namespaces, type ClientOptions, type FeatureDict, type RetryOptions } from "./client.js";
export type * as v1 from "./types.js";
