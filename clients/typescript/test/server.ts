// A real ltrr server for the tests: `ltrr serve` from the repository's virtual environment (or
// $LTRR_BIN) on a free port, with a small catalog, in a temporary directory.
import { spawn, type ChildProcess } from "node:child_process";
import { mkdtempSync, rmSync, writeFileSync } from "node:fs";
import { createServer } from "node:net";
import { tmpdir } from "node:os";
import { join, resolve } from "node:path";

import { LtrrClient } from "../src/index.js";

const CONFIG = (db: string, data: string, port: number) => `
[server]
db_url = "sqlite:///${db}"
grpc_port = ${port}
metrics_port = -1
demo_autocomplete_sessions = 0

[[policies]]
name = "demo"
kind = "cb"
exploration = "epsilon"
epsilon = 0.1
join_window_seconds = 30
[[policies.actions]]
id = "news"
[[policies.actions]]
id = "sports"

[[policies]]
name = "retrieval"
kind = "cb"
exploration = "epsilon"
epsilon = 0.05
interactions = ["hP"]

[retrieval]
data_dir = "${data}"
demo_items = 2000
policies = ["retrieval"]

[retrieval.strategies.lexical]
budgets = [0, 10, 50]
[retrieval.strategies.vector]
budgets = [0, 10, 50]
`;

function freePort(): Promise<number> {
  return new Promise((ok, fail) => {
    const s = createServer();
    s.once("error", fail);
    s.listen(0, "127.0.0.1", () => {
      const port = (s.address() as { port: number }).port;
      s.close(() => ok(port));
    });
  });
}

export interface TestServer {
  target: string;
  stop(): Promise<void>;
}

export async function startServer(): Promise<TestServer> {
  const dir = mkdtempSync(join(tmpdir(), "ltrr-ts-"));
  const port = await freePort();
  const config = join(dir, "ltrr.toml");
  writeFileSync(config, CONFIG(join(dir, "ltrr.db"), join(dir, "data"), port));
  const bin = process.env.LTRR_BIN ?? resolve(process.cwd(), "..", "..", ".venv", "bin", "ltrr");
  const proc: ChildProcess = spawn(bin, ["serve", "--config", config], { cwd: dir, stdio: ["ignore", "ignore", "pipe"] });
  let stderr = "";
  proc.stderr?.on("data", (chunk) => { stderr = (stderr + chunk).slice(-4000); });
  const target = `127.0.0.1:${port}`;
  const client = new LtrrClient(target, { timeoutMs: 2000, retry: { attempts: 1 } });
  const deadline = Date.now() + 180_000;
  try {
    // Ready once Search answers (the catalog is built on a first start).
    for (;;) {
      if (proc.exitCode !== null) throw new Error(`ltrr serve exited with ${proc.exitCode}: ${stderr}`);
      try {
        await client.search("retrieval", "jazz");
        break;
      } catch (err) {
        if (Date.now() > deadline) throw new Error(`ltrr serve not ready after 180 s: ${String(err)}\n${stderr}`);
        await new Promise((r) => setTimeout(r, 250));
      }
    }
  } finally {
    client.close();
  }
  return {
    target,
    stop: () => new Promise<void>((done) => {
      proc.once("exit", () => {
        rmSync(dir, { recursive: true, force: true });
        done();
      });
      proc.kill("SIGINT");
    }),
  };
}
