// Builds dist/esm (ES modules) and dist/cjs (CommonJS) from src with tsc, with declarations
// for both, so `import` and `require` each get their own format and types.
import { execFileSync } from "node:child_process";
import { mkdirSync, rmSync, writeFileSync } from "node:fs";
import { dirname, join, resolve } from "node:path";
import { fileURLToPath } from "node:url";

const packageDir = resolve(dirname(fileURLToPath(import.meta.url)), "..");
const tsc = join(packageDir, "node_modules", "typescript", "bin", "tsc");
rmSync(join(packageDir, "dist"), { recursive: true, force: true });
for (const config of ["tsconfig.esm.json", "tsconfig.cjs.json"]) {
  try {
    execFileSync(process.execPath, [tsc, "-p", config], { cwd: packageDir, stdio: "inherit" });
  } catch {
    console.error(`tsc -p ${config} failed`);
    process.exit(1);
  }
}
// The package is "type": "module"; this marker makes Node read dist/cjs as CommonJS.
mkdirSync(join(packageDir, "dist", "cjs"), { recursive: true });
writeFileSync(join(packageDir, "dist", "cjs", "package.json"), '{ "type": "commonjs" }\n');
console.log("built dist/esm and dist/cjs");
