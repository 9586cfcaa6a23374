// Builds the UI into ../api/ui: index.html, app.js (an ES module), the chunks it imports when a page
// first needs them (<name>-<hash>.js: three.js for the 3D viewer), app.css and manifest.json.
// manifest.json carries a SHA-256 over every source file under web/ (what
// tests/unit/test_ui_bundle.py recomputes, so a change to the sources without a rebuild
// fails the suite) and the SHA-256 of each built file.
import { createHash } from "node:crypto";
import { mkdirSync, readFileSync, readdirSync, rmSync, statSync, writeFileSync } from "node:fs";
import { dirname, join, relative, sep } from "node:path";
import { fileURLToPath } from "node:url";
import * as esbuild from "esbuild";

const web = dirname(fileURLToPath(import.meta.url));
const out = join(web, "..", "api", "ui");

/** Every source file under web/, as sorted posix paths: not node_modules, not dotfiles. */
function sourceFiles(dir = web) {
  const files = [];
  for (const name of readdirSync(dir)) {
    if (name === "node_modules" || name.startsWith(".")) continue;
    const path = join(dir, name);
    if (statSync(path).isDirectory()) files.push(...sourceFiles(path));
    else files.push(relative(web, path).split(sep).join("/"));
  }
  return files.sort();
}

const sha256 = (data) => createHash("sha256").update(data).digest("hex");

/** The sources' hash: sha256 over "<path>\0<sha256 of its bytes>\n" for each file in path order. */
export function sourcesHash() {
  const lines = sourceFiles().map((p) => `${p}\0${sha256(readFileSync(join(web, p)))}\n`);
  return sha256(lines.join(""));
}

/**
 * An import cycle among our modules (src/), as the list of its files, or null. Read from esbuild's
 * metafile, so type-only imports (erased) do not count. A cycle means a module runs before one it
 * imports has finished loading (pages once imported navigate from main.ts, which imports them).
 */
function importCycle(metafile) {
  const imports = (file) => metafile.inputs[file].imports.map((i) => i.path).filter((p) => p.startsWith("src/"));
  const state = new Map(); // file -> "open" while on the path, "done" once all it reaches was seen
  const path = [];
  const visit = (file) => {
    if (state.get(file) === "done") return null;
    if (state.get(file) === "open") return [...path.slice(path.indexOf(file)), file];
    state.set(file, "open");
    path.push(file);
    for (const next of imports(file)) {
      const cycle = visit(next);
      if (cycle) return cycle;
    }
    path.pop();
    state.set(file, "done");
    return null;
  };
  for (const file of Object.keys(metafile.inputs).filter((p) => p.startsWith("src/"))) {
    const cycle = visit(file);
    if (cycle) return cycle;
  }
  return null;
}

async function build() {
  rmSync(out, { recursive: true, force: true });
  mkdirSync(out, { recursive: true });
  const { metafile } = await esbuild.build({
    absWorkingDir: web,
    metafile: true,
    entryPoints: { app: join(web, "src", "main.ts") },
    bundle: true,
    minify: true,
    // ESM with splitting: a dynamic import() becomes a chunk loaded on first use (three.js, ~750 KiB,
    // only for 3D objects), not part of the first load. Chunks sit beside app.js (the package ships ui/*)
    // and are named by their content hash, so a new build never meets a stale cached chunk.
    format: "esm",
    splitting: true,
    chunkNames: "[name]-[hash]",
    target: ["es2020"],
    outdir: out,
    legalComments: "none",
    logLevel: "warning",
  });
  const cycle = importCycle(metafile);
  if (cycle) throw new Error(`import cycle: ${cycle.join(" -> ")}; move what both need into a module of its own`);
  // The stylesheet: uPlot's, then ours.
  const css = readFileSync(join(web, "node_modules", "uplot", "dist", "uPlot.min.css"), "utf8") + "\n" +
    readFileSync(join(web, "src", "styles.css"), "utf8");
  writeFileSync(join(out, "app.css"), css);
  const js = readFileSync(join(out, "app.js"));
  const html = readFileSync(join(web, "index.html"), "utf8")
    .replace("%CSS%", `/app.css?v=${sha256(css).slice(0, 12)}`)
    .replace("%JS%", `/app.js?v=${sha256(js).slice(0, 12)}`);
  writeFileSync(join(out, "index.html"), html);
  const files = {};
  const chunks = readdirSync(out).filter((name) => name.endsWith(".js") && name !== "app.js").sort();
  for (const name of ["index.html", "app.js", "app.css", ...chunks]) files[name] = sha256(readFileSync(join(out, name)));
  const manifest = { sources_sha256: sourcesHash(), files, built_by: "web/build.mjs (npm run build)" };
  writeFileSync(join(out, "manifest.json"), JSON.stringify(manifest, null, 2) + "\n");
  console.log(`built ${out}: app.js ${(js.length / 1024).toFixed(0)} KiB, sources ${manifest.sources_sha256.slice(0, 12)}`);
}

await build();
