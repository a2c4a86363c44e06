// Regenerates src/gen from the protos (protos/ at the repository root, plus the vendored
// google.rpc error details under proto/) with buf and the local protoc-gen-es plugin.
//
//   node scripts/generate.mjs           rewrite src/gen
//   node scripts/generate.mjs --check   exit 1 when src/gen differs from a fresh run
//
// buf is taken from $BUF, else the repository's Python virtual environment (.venv/bin/buf,
// installed by `pip install -e './server[test]'`), else PATH. Nothing is fetched: the plugin
// is node_modules/.bin/protoc-gen-es.
import { execFileSync } from "node:child_process";
import { existsSync, mkdtempSync, readdirSync, readFileSync, rmSync, cpSync } from "node:fs";
import { tmpdir } from "node:os";
import { dirname, join, relative, resolve } from "node:path";
import { fileURLToPath } from "node:url";

const packageDir = resolve(dirname(fileURLToPath(import.meta.url)), "..");
const repoRoot = resolve(packageDir, "..", "..");
const generatedDir = join(packageDir, "src", "gen");

function findBuf() {
  if (process.env.BUF) return process.env.BUF;
  const venvBuf = join(repoRoot, ".venv", "bin", "buf");
  return existsSync(venvBuf) ? venvBuf : "buf";
}

function listFiles(root) {
  if (!existsSync(root)) return [];
  return readdirSync(root, { recursive: true, withFileTypes: true })
    .filter((entry) => entry.isFile())
    .map((entry) => relative(root, join(entry.parentPath ?? entry.path, entry.name)))
    .sort();
}

const check = process.argv.includes("--check");
if (!existsSync(join(packageDir, "node_modules", ".bin", "protoc-gen-es"))) {
  console.error("protoc-gen-es is missing: run `npm ci` in clients/typescript first");
  process.exit(2);
}
const scratch = mkdtempSync(join(tmpdir(), "cofounder-ts-gen-"));
try {
  execFileSync(findBuf(), ["generate", "--output", scratch], { cwd: packageDir, stdio: "inherit" });
  const freshDir = join(scratch, "src", "gen");
  const fresh = listFiles(freshDir);
  const committed = listFiles(generatedDir);
  const stale = [...new Set([...fresh, ...committed])].sort().filter((file) => {
    const a = join(freshDir, file);
    const b = join(generatedDir, file);
    return !existsSync(a) || !existsSync(b) || !readFileSync(a).equals(readFileSync(b));
  });
  if (check) {
    if (stale.length > 0) {
      console.error("TypeScript generated code is out of date; run `npm run generate` in clients/typescript:");
      for (const file of stale) console.error(`  src/gen/${file}`);
      // Not process.exit(): the scratch directory is removed below first.
      process.exitCode = 1;
    } else {
      console.log(`TypeScript generated code is up to date (${fresh.length} files)`);
    }
  } else {
    rmSync(generatedDir, { recursive: true, force: true });
    cpSync(freshDir, generatedDir, { recursive: true });
    console.log(`wrote ${fresh.length} files under src/gen; ${stale.length} changed`);
  }
} finally {
  rmSync(scratch, { recursive: true, force: true });
}
