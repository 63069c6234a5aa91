'use strict';
// Kindling's Lambda runtime client for Node.js: the task's main script
// (node {root}/runtime/bootstrap.cjs). It loads the handler named by
// _HANDLER ("file.export", "dir/file.export.path") from LAMBDA_TASK_ROOT
// during init, then serves invocations from the Runtime API at
// AWS_LAMBDA_RUNTIME_API: GET invocation/next, await the handler, POST
// the answer to invocation/<id>/response or a Lambda error document
// ({errorMessage, errorType, stackTrace}) to invocation/<id>/error. An
// init failure goes to init/error. With AWS_LAMBDA_INITIALIZATION_TYPE=
// snap-start it runs the handler module's beforeSnapshot export, asks
// GET restore/next (which answers once the VM is restored), runs its
// afterRestore export (a failure goes to restore/error), then serves.
//
// Node's module compile cache, as found in node 22.23.3 and 24.21.0 (run
// with NODE_DEBUG_NATIVE=COMPILE_CACHE) and in src/compile_cache.cc:
//
//  - NODE_COMPILE_CACHE=<dir> (node >= 22.1) turns it on at startup;
//    module.getCompileCacheDir() then names <dir>/<tag>, where the tag
//    is v<version>-<arch>-<V8 cached-data version tag, which hashes V8's
//    flags>-<uid>: another node, other V8 flags or another uid misses.
//  - Each CommonJS or ES module compiled gets a file <tag>/<key>: the
//    key is crc32(type byte, 0 for CommonJS, then the module's absolute
//    file name); the file holds the source's size and crc32 (a changed
//    file is a miss, not a wrong hit) and V8's code cache.
//  - That code cache is serialised as the module is compiled, before it
//    runs: it holds the module's top-level code and what V8 compiled
//    eagerly, not the functions compiled lazily when an invocation first
//    calls them (flushed before or after invocations, every entry has
//    the same size). Flushing after invocations adds only modules first
//    required during them; nothing refreshes an entry already made. So
//    the cache spares init (the requires), not the first calls. V8's
//    --no-lazy (a node argument before this script; NODE_OPTIONS refuses
//    it) compiles every function up front, so the cache then holds them
//    all: for internal/testtasks/nodebig, 2.3 times the cache and a
//    first invocation of ~45 ms instead of ~105 ms, at the price of
//    compiling code that is never called.
//  - Entries are written when the process exits or, from node 22.10, at
//    module.flushCompileCache(); a flush writes what is new since the
//    last and then forgets it, so flushing after every invocation costs
//    next to nothing once the first has written the init's modules.
//  - Keys are absolute paths: the same code at another root misses. From
//    node 24.12 (and 25), NODE_COMPILE_CACHE_PORTABLE=1 (or
//    enableCompileCache({portable: true})) keys a module by its path
//    relative to <tag> instead; the image keeps the cache and the code
//    under one root, so that holds wherever the root is. Node 22 has no
//    portable mode: this client keeps an index of the CommonJS modules it
//    flushed (paths relative to <tag>, in INDEX) and, at startup under
//    another root, renames their entries to the keys the new paths
//    give, before the handler is loaded. ES modules are not re-keyed.
//    It also moves entries made under another uid into this uid's tag.

const fs = require('node:fs');
const http = require('node:http');
const Module = require('node:module');
const path = require('node:path');
const { pathToFileURL } = require('node:url');

const API_PREFIX = '/2018-06-01/runtime';
// INDEX sits beside the tags in NODE_COMPILE_CACHE and ships with them.
const INDEX = 'kindling-index.json';
const INDEX_FORMAT = 2;

function log(...args) {
  process.stderr.write('kindling-runtime: ' + args.join(' ') + '\n');
}

// --- Runtime API client -------------------------------------------------

const [apiHost, apiPort] = splitHostPort(process.env.AWS_LAMBDA_RUNTIME_API || '');
// One connection, kept alive: requests are strictly one after another.
const agent = new http.Agent({ keepAlive: true, maxSockets: 1 });

function splitHostPort(s) {
  const i = s.lastIndexOf(':');
  if (i < 0) return [s, 80];
  return [s.slice(0, i).replace(/^\[|\]$/g, ''), Number(s.slice(i + 1))];
}

// request asks the Runtime API. A connection that fails before any answer
// (a kept-alive one the server closed while idle) is retried: a POST the
// server did take, sent again, is refused as finished, and logged.
async function request(method, p, body, headers) {
  for (let attempt = 1; ; attempt++) {
    try {
      return await requestOnce(method, p, body, headers);
    } catch (err) {
      if (attempt >= 3 || !['ECONNRESET', 'EPIPE', 'ECONNREFUSED'].includes(err.code)) throw err;
      await new Promise((r) => setTimeout(r, 50 * attempt));
    }
  }
}

function requestOnce(method, p, body, headers) {
  return new Promise((resolve, reject) => {
    const h = Object.assign({}, headers);
    if (body !== undefined) {
      body = Buffer.from(body);
      h['Content-Type'] = h['Content-Type'] || 'application/json';
      h['Content-Length'] = body.length;
    }
    const req = http.request({ host: apiHost, port: apiPort, path: API_PREFIX + p, method, headers: h, agent }, (res) => {
      const chunks = [];
      res.on('data', (c) => chunks.push(c));
      res.on('end', () => resolve({ status: res.statusCode, headers: res.headers, body: Buffer.concat(chunks) }));
      res.on('error', reject);
    });
    req.on('error', reject);
    req.end(body);
  });
}

// post sends an answer; the Runtime API having refused one (a response
// too large, an invocation already timed out) is logged, not fatal.
async function post(p, body, headers) {
  const res = await request('POST', p, body, headers);
  if (res.status >= 300) log(`POST ${p}: HTTP ${res.status}: ${res.body.toString().slice(0, 500)}`);
  return res;
}

function errorDocument(err, type) {
  const e = err instanceof Error ? err : new Error(String(err));
  const stack = typeof e.stack === 'string' ? e.stack.split('\n').slice(1).map((l) => l.trim()) : [];
  return {
    errorType: type || e.errorType || e.name || 'Error',
    errorMessage: e.message,
    stackTrace: stack,
  };
}

function postError(p, err, type) {
  const doc = errorDocument(err, type);
  return post(p, JSON.stringify(doc), { 'Lambda-Runtime-Function-Error-Type': doc.errorType });
}

function typed(type, message, cause) {
  const e = new Error(message, cause ? { cause } : undefined);
  e.errorType = type;
  if (cause && cause.stack) e.stack = cause.stack;
  return e;
}

// --- the handler --------------------------------------------------------

// loadHandler resolves _HANDLER in LAMBDA_TASK_ROOT as Lambda's Node
// runtimes do: the part up to the first dot after the last slash is the
// module (tried as .js, .mjs, .cjs), the rest the export's path.
async function loadHandler() {
  const root = process.env.LAMBDA_TASK_ROOT || process.cwd();
  const spec = process.env._HANDLER || 'index.handler';
  const slash = spec.lastIndexOf('/');
  const dot = spec.indexOf('.', slash + 1);
  if (dot < 0 || dot === spec.length - 1) {
    throw typed('Runtime.MalformedHandlerName', `Bad handler ${spec}: want file.export`);
  }
  const base = path.resolve(root, spec.slice(0, dot));
  const mod = await loadModule(base);
  let fn = mod;
  for (const k of spec.slice(dot + 1).split('.')) fn = fn == null ? undefined : fn[k];
  if (typeof fn !== 'function' && mod && mod.default) {
    fn = mod.default;
    for (const k of spec.slice(dot + 1).split('.')) fn = fn == null ? undefined : fn[k];
  }
  if (typeof fn !== 'function') {
    throw typed('Runtime.HandlerNotFound', `${spec} is undefined or not exported`);
  }
  const hook = (name) => (mod && typeof mod[name] === 'function' ? mod[name] : undefined);
  return { handler: fn, beforeSnapshot: hook('beforeSnapshot'), afterRestore: hook('afterRestore') };
}

async function loadModule(base) {
  for (const ext of ['.js', '.mjs', '.cjs']) {
    const file = base + ext;
    if (!fs.existsSync(file)) continue;
    try {
      if (ext !== '.mjs') {
        try {
          return require(file);
        } catch (err) {
          if (err.code !== 'ERR_REQUIRE_ESM' && err.code !== 'ERR_REQUIRE_ASYNC_MODULE') throw err;
        }
      }
      return await import(pathToFileURL(file).href);
    } catch (err) {
      if (err instanceof SyntaxError) throw typed('Runtime.UserCodeSyntaxError', `${err.name}: ${err.message}`, err);
      if (err.code === 'MODULE_NOT_FOUND' || err.code === 'ERR_MODULE_NOT_FOUND') {
        throw typed('Runtime.ImportModuleError', `${err.name}: ${err.message}`, err);
      }
      throw err;
    }
  }
  throw typed('Runtime.ImportModuleError', `Error: Cannot find module '${base}' (tried .js, .mjs and .cjs)`);
}

function parseJSONHeader(v) {
  if (!v) return undefined;
  try {
    return JSON.parse(v);
  } catch {
    return undefined;
  }
}

function makeContext(id, h) {
  const deadline = Number(h['lambda-runtime-deadline-ms']) || 0;
  const env = process.env;
  return {
    awsRequestId: id,
    invokedFunctionArn: h['lambda-runtime-invoked-function-arn'],
    functionName: env.AWS_LAMBDA_FUNCTION_NAME,
    functionVersion: env.AWS_LAMBDA_FUNCTION_VERSION || '$LATEST',
    memoryLimitInMB: env.AWS_LAMBDA_FUNCTION_MEMORY_SIZE,
    logGroupName: env.AWS_LAMBDA_LOG_GROUP_NAME,
    logStreamName: env.AWS_LAMBDA_LOG_STREAM_NAME,
    clientContext: parseJSONHeader(h['lambda-runtime-client-context']),
    identity: parseJSONHeader(h['lambda-runtime-cognito-identity']),
    callbackWaitsForEmptyEventLoop: true,
    getRemainingTimeInMillis: () => Math.max(0, deadline - Date.now()),
  };
}

// invoke runs the handler: async, or callback-style when it takes three
// arguments.
function invoke(handler, event, context) {
  if (handler.length < 3) return Promise.resolve().then(() => handler(event, context));
  return new Promise((resolve, reject) => {
    const r = handler(event, context, (err, value) => (err ? reject(err) : resolve(value)));
    if (r && typeof r.then === 'function') r.then(resolve, reject);
  });
}

// --- the compile cache --------------------------------------------------

// crc32 is zlib's (node 22.1 lacks zlib.crc32).
const CRC_TABLE = (() => {
  const t = new Uint32Array(256);
  for (let n = 0; n < 256; n++) {
    let c = n;
    for (let k = 0; k < 8; k++) c = c & 1 ? 0xedb88320 ^ (c >>> 1) : c >>> 1;
    t[n] = c >>> 0;
  }
  return t;
})();

function crc32(buf) {
  let c = 0xffffffff;
  for (let i = 0; i < buf.length; i++) c = CRC_TABLE[(c ^ buf[i]) & 0xff] ^ (c >>> 8);
  return (c ^ 0xffffffff) >>> 0;
}

// cacheKey is the file name node 22 gives a CommonJS module's entry.
function cacheKey(file) {
  return crc32(Buffer.concat([Buffer.from([0]), Buffer.from(file)])).toString(16).padStart(8, '0');
}

function portableSupported() {
  const [major, minor] = process.versions.node.split('.').map(Number);
  return major > 24 || (major === 24 && minor >= 12);
}

// compileCache readies the carried cache before the handler loads and
// returns flush(), which writes what is new and keeps the index.
function compileCache() {
  const tagDir = process.env.NODE_COMPILE_CACHE && typeof Module.getCompileCacheDir === 'function' ? Module.getCompileCacheDir() : undefined;
  if (!tagDir) return { flush() {} };
  const base = path.dirname(tagDir);
  const tag = path.basename(tagDir);
  const portable = process.env.NODE_COMPILE_CACHE_PORTABLE === '1' && portableSupported();
  // Module paths are kept relative to the image root (LAMBDA_TASK_ROOT
  // is <root>/var/task), not to the cache: under the process backend the
  // cache is each sandbox's own copy, outside the root.
  const rootGuess = path.resolve(process.env.LAMBDA_TASK_ROOT || path.dirname(__dirname), '..', '..');
  let here;
  try {
    here = fs.realpathSync(rootGuess);
  } catch {
    here = rootGuess;
  }
  let index;
  try {
    index = JSON.parse(fs.readFileSync(path.join(base, INDEX), 'utf8'));
    if (index.format !== INDEX_FORMAT || !Array.isArray(index.files)) index = undefined;
  } catch {
    index = undefined;
  }
  // known: the modules with entries here (relative to here), the
  // carried ones included once adopted, so that a module this process
  // has not loaded yet is re-keyed at the next root too.
  const known = new Set();
  try {
    if (index && adopt(index, tagDir, tag, here, portable)) index.files.forEach((f) => known.add(f));
  } catch (err) {
    log('compile cache: could not adopt the carried cache:', err.message);
  }
  const flushable = typeof Module.flushCompileCache === 'function';
  if (!flushable) log(`compile cache: node ${process.version} has no module.flushCompileCache (22.10+); entries are written at exit only`);
  let loaded = -1;
  return {
    flush() {
      try {
        if (flushable) Module.flushCompileCache();
        const files = Object.keys(require.cache);
        if (files.length === loaded) return;
        loaded = files.length;
        for (const f of files) if (path.isAbsolute(f)) known.add(path.relative(here, f));
        writeIndex(base, {
          format: INDEX_FORMAT,
          tag,
          dir: here,
          // Whether node's keys are what cacheKey computes: the entry of
          // this very script says so once it has been flushed.
          keyed: portable || fs.existsSync(path.join(tagDir, cacheKey(__filename))),
          portable,
          files: [...known].filter((f) => fs.existsSync(path.resolve(here, f))).sort(),
        });
      } catch (err) {
        log('compile cache: flush:', err.message);
      }
    },
  };
}

// adopt makes a carried cache's entries findable here: moved from the tag
// of another uid, and re-keyed for this root when node keys by absolute
// path. It reports whether the index's files now name entries here.
// Another instance sharing the root may be adopting too: a rename that
// loses the race is skipped.
function adopt(index, tagDir, tag, here, portable) {
  // One rename per entry, no stat: this runs before the handler loads.
  const rename = (src, dst) => {
    try {
      fs.renameSync(src, dst);
      return true;
    } catch {
      return false;
    }
  };
  const from = path.join(path.dirname(tagDir), String(index.tag));
  const sameNode = (t) => t.slice(0, t.lastIndexOf('-'));
  if (index.tag !== tag && path.basename(from) === index.tag && sameNode(index.tag) === sameNode(tag) && fs.existsSync(from)) {
    for (const name of fs.readdirSync(from)) {
      if (!fs.existsSync(path.join(tagDir, name))) rename(path.join(from, name), path.join(tagDir, name));
    }
  }
  if (index.dir === here || portable) return true;
  if (index.portable || !index.keyed || typeof index.dir !== 'string') return false;
  const start = process.hrtime.bigint();
  let moved = 0;
  for (const rel of index.files) {
    if (typeof rel !== 'string') continue;
    const oldKey = cacheKey(path.resolve(index.dir, rel));
    const newKey = cacheKey(path.resolve(here, rel));
    if (oldKey !== newKey && rename(path.join(tagDir, oldKey), path.join(tagDir, newKey))) moved++;
  }
  const ms = Number(process.hrtime.bigint() - start) / 1e6;
  log(`compile cache: re-keyed ${moved} of ${index.files.length} entries from ${index.dir} to ${here} in ${ms.toFixed(1)} ms`);
  return true;
}

function writeIndex(base, index) {
  const p = path.join(base, INDEX);
  const tmp = `${p}.${process.pid}.tmp`;
  fs.writeFileSync(tmp, JSON.stringify(index) + '\n');
  fs.renameSync(tmp, p);
}

// --- the loop -------------------------------------------------------------

let current; // the invocation being handled, for errors that escape it

async function fatal(err, type) {
  try {
    if (current) await postError(`/invocation/${current}/error`, err, type);
    else await postError('/init/error', err, type);
  } catch (e) {
    log('cannot report an error:', e.message);
  }
  log(`${type}:`, err && err.stack ? err.stack : String(err));
  process.exit(1);
}

process.on('uncaughtException', (err) => fatal(err, 'Runtime.UncaughtException'));
process.on('unhandledRejection', (err) => fatal(err, 'Runtime.UnhandledPromiseRejection'));

async function main() {
  if (!apiHost) {
    log('AWS_LAMBDA_RUNTIME_API is not set');
    process.exit(2);
  }
  // Lambda runs a function in its task root.
  if (process.env.LAMBDA_TASK_ROOT) {
    try {
      process.chdir(process.env.LAMBDA_TASK_ROOT);
    } catch (err) {
      log('cannot enter LAMBDA_TASK_ROOT:', err.message);
    }
  }
  const cache = compileCache();
  let task;
  try {
    task = await loadHandler();
  } catch (err) {
    await postError('/init/error', err, err.errorType || 'Runtime.InitError');
    log('init failed:', err.stack || err);
    process.exit(1);
  }
  if (process.env.AWS_LAMBDA_INITIALIZATION_TYPE === 'snap-start') {
    try {
      if (task.beforeSnapshot) await task.beforeSnapshot();
    } catch (err) {
      await postError('/init/error', err, 'Runtime.BeforeSnapshotError');
      process.exit(1);
    }
    cache.flush(); // the snapshot holds a written cache
    const res = await request('GET', '/restore/next');
    if (res.status !== 200) throw new Error(`GET restore/next: HTTP ${res.status}`);
    try {
      if (task.afterRestore) await task.afterRestore();
    } catch (err) {
      await postError('/restore/error', err, 'Runtime.AfterRestoreError');
      process.exit(1);
    }
  }
  for (;;) {
    const next = await request('GET', '/invocation/next');
    if (next.status !== 200) throw new Error(`GET invocation/next: HTTP ${next.status}: ${next.body.toString().slice(0, 500)}`);
    const id = next.headers['lambda-runtime-aws-request-id'];
    if (next.headers['lambda-runtime-trace-id']) process.env._X_AMZN_TRACE_ID = next.headers['lambda-runtime-trace-id'];
    else delete process.env._X_AMZN_TRACE_ID;
    current = id;
    let body;
    try {
      const event = next.body.length ? JSON.parse(next.body.toString()) : undefined;
      const value = await invoke(task.handler, event, makeContext(id, next.headers));
      body = JSON.stringify(value === undefined ? null : value);
    } catch (err) {
      current = undefined;
      await postError(`/invocation/${id}/error`, err);
      cache.flush();
      continue;
    }
    current = undefined;
    await post(`/invocation/${id}/response`, body);
    cache.flush(); // after answering: the caller does not wait for it
  }
}

main().catch((err) => fatal(err, 'Runtime.Error'));
