// Copies the repository's protos into the package (they are loaded at run time and published with it).
import { cpSync, mkdirSync } from "node:fs";
import { dirname, join } from "node:path";
import { fileURLToPath } from "node:url";

const here = dirname(fileURLToPath(import.meta.url));
// Only the .proto files (not buf's configuration or its compatibility image).
const source = join(here, "..", "..", "..", "protos", "ltrr");
const target = join(here, "..", "protos", "ltrr");
mkdirSync(target, { recursive: true });
cpSync(source, target, { recursive: true });
