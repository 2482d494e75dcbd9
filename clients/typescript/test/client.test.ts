// The TypeScript client against a real ltrr server: decisions, rewards (one and streamed, with
// acks), search, administration and evaluation, errors that name the field.
import assert from "node:assert/strict";
import { after, before, test } from "node:test";

import * as grpc from "@grpc/grpc-js";

import { LtrrClient, namespaces } from "../src/index.js";
import { startServer, type TestServer } from "./server.js";

let server: TestServer;
let client: LtrrClient;

before(async () => {
  server = await startServer();
  client = new LtrrClient(server.target);
});

after(async () => {
  client.close();
  await server.stop();
});

test("decide returns the chosen action and its probabilities; a reward is acked once committed", async () => {
  const d = await client.decide("demo", { user: { segment: "s1", age: 31 } });
  assert.ok(d.event_id);
  assert.ok(["news", "sports"].includes(d.chosen_action_id));
  assert.ok(d.probability > 0 && d.probability <= 1);
  assert.deepEqual(d.probabilities.map((p) => p.action_id).sort(), ["news", "sports"]);
  const ack = await client.reportReward(d.event_id, 1.0);
  assert.equal(ack.status, "REWARD_STATUS_ACCEPTED");
  // The same (event, reward id) again: a duplicate, nothing changed.
  assert.equal((await client.reportReward(d.event_id, 1.0)).status, "REWARD_STATUS_DUPLICATE");
});

test("decisions on one stream come back in order; streamed rewards get one ack batch per batch", async () => {
  const requests = Array.from({ length: 20 }, (_, i) => ({ policy: "demo", request_id: `r${i}`,
    context: namespaces({ user: { segment: `s${i % 3}` } }) }));
  const decisions = await client.decideStream(requests);
  assert.deepEqual(decisions.map((d) => d.request_id), requests.map((r) => r.request_id));
  const batches = [decisions.slice(0, 10), decisions.slice(10)].map((part) =>
    part.map((d) => ({ event_id: d.event_id, value: 1.0 })));
  batches[1].push({ event_id: "no-such-event", value: 1.0 });
  const acks = await client.streamRewards(batches);
  assert.equal(acks.length, 2);
  assert.deepEqual(acks[0].acks.map((a) => a.status), Array(10).fill("REWARD_STATUS_ACCEPTED"));
  assert.equal(acks[1].acks.length, 11);
  assert.equal(acks[1].acks[10].status, "REWARD_STATUS_UNKNOWN_EVENT");
});

test("search returns a ranked page with provenance; a reward names the engaged item", async () => {
  const page = await client.search("retrieval", "mellow jazz songs", { userId: "u1", pageSize: 5 });
  assert.ok(page.event_id && page.results.length > 0 && page.results.length <= 5);
  assert.deepEqual(page.results.map((r) => r.position), page.results.map((_, i) => i + 1));
  assert.ok(page.results.every((r) => r.hits.length > 0));
  assert.ok(page.plan_probability > 0 && page.page_probability > 0);
  const ack = await client.reportReward(page.event_id, 1.0, { engaged: [page.results[0].item_id] });
  assert.equal(ack.status, "REWARD_STATUS_ACCEPTED");
  const baseline = await client.search("retrieval", "mellow jazz songs", { order: "fusion", fixedPlan: { lexical: 10 } });
  assert.equal(baseline.ranker, "fusion");
  assert.equal(baseline.page_probability, 1);
  const union = await client.retrieve("retrieval", "mellow jazz songs", { fixedPlan: { lexical: 10 }, limit: 3 });
  assert.ok(union.candidates.length <= 3 && union.plan === "lexical:10");
});

test("policies are created, listed, described and evaluated from their log", async () => {
  const created = await client.createPolicy({ name: "ts-made", actions: [{ id: "a" }, { id: "b" }] });
  assert.equal(created.spec?.name, "ts-made");
  assert.ok((await client.listPolicies()).some((p) => p.spec?.name === "ts-made"));
  for (let i = 0; i < 40; i++) {
    const d = await client.decide("ts-made", { user: { segment: `s${i % 2}` } });
    await client.reportReward(d.event_id, d.chosen_action_id === "a" ? 1 : 0);
  }
  const stats = await client.stats("ts-made");
  assert.equal(Number(stats.decisions), 40);
  let updates = 0;
  const evaluation = await client.evaluate({ name: "ts-made" }, () => { updates++; });
  assert.ok(updates >= 1 && evaluation.targets.length >= 2);
  // An update changes what it sets (or its mask names) and keeps the rest: the actions here.
  const described = await client.updatePolicy({ name: "ts-made", description: "two actions" });
  assert.deepEqual(described.policy?.spec?.actions.map((a) => a.id), ["a", "b"]);
  assert.equal(described.model_reset, false);
  const cleared = await client.updatePolicy({ name: "ts-made" }, ["description"]);
  assert.equal(cleared.policy?.spec?.description, "");
});

test("bad input gets a status naming the field; a value the API cannot carry is refused here", async () => {
  await assert.rejects(client.decide("nope"), (err: grpc.ServiceError) => {
    assert.equal(err.code, grpc.status.NOT_FOUND);
    assert.match(err.details, /nope/);
    return true;
  });
  await assert.rejects(client.search("retrieval", "jazz", { pageSize: 1000 }), (err: grpc.ServiceError) => {
    assert.equal(err.code, grpc.status.INVALID_ARGUMENT);
    assert.match(err.details, /^page_size/);
    return true;
  });
  assert.throws(() => namespaces({ user: { tags: ["a"] as unknown as string } }), /context\.user\.tags/);
});

test("idempotent calls are retried with backoff while the server is away; others fail at once", async () => {
  const away = new LtrrClient("127.0.0.1:1", { timeoutMs: 500, retry: { attempts: 3, initialBackoffMs: 50 } });
  const started = Date.now();
  await assert.rejects(away.stats("demo"), (err: grpc.ServiceError) => err.code === grpc.status.UNAVAILABLE);
  assert.ok(Date.now() - started >= 50, "waited between attempts");
  await assert.rejects(away.decide("demo"), (err: grpc.ServiceError) => err.code === grpc.status.UNAVAILABLE);
  away.close();
});
