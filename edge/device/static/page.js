// The teach page of edge-agent. Plain JavaScript, no build step: it talks only to the agent's public
// HTTP API (GET /status, GET /events, GET /stream.mjpg, POST /teach, POST /teach/finish,
// POST /classes/<name>/rename and /forget; the taught samples: GET /classes/<name>/samples,
// GET /samples/<id>/thumbnail, DELETE /samples/<id>, POST /undo), so everything it does can be scripted.
"use strict";
(() => {
  const TOKEN_KEY = "edge-agent-token";
  const TOKEN_COOKIE = "edge_token";
  const HOLD_MAX_S = 60;          // the API's longest teach (MAX_TEACH_SECONDS)
  const STATUS_MS = 1000;         // status refresh
  const HOLD_STATUS_MS = 250;     // status refresh while recording (the sample counter)
  const $ = (id) => document.getElementById(id);

  let token = localStorage.getItem(TOKEN_KEY) || "";
  let events = null;
  let statusTimer = null;
  let hold = null;                // {label, started: Promise, timer}
  let lastStatus = null;
  let lastRate = null;            // {frames, predictions} of the previous status: answers per frame
  let cameraPoll = null;          // interval that looks for the first frame (a multipart stream may fire no load)
  let learnWatch = null;          // {label, frames, before}: a finished teach until its frames are learned
  let classesKey = "";
  let editing = null;             // name of the class being renamed
  let openSamples = null;         // name of the class whose thumbnails are shown
  let lastAnnounced = "";
  let lastAnswerAt = 0;           // performance.now() of the latest prediction event

  class ApiError extends Error {
    constructor(status, message) { super(message); this.status = status; }
  }

  function setCookie() {
    document.cookie = `${TOKEN_COOKIE}=${encodeURIComponent(token)}; path=/; SameSite=Strict`;
  }

  async function api(method, path, body) {
    const headers = {};
    // The agent refuses a state-changing request without the JSON content type (415).
    if (method !== "GET") headers["Content-Type"] = "application/json";
    if (method !== "GET" && body === undefined) body = {};
    if (token) headers.Authorization = `Bearer ${token}`;
    const resp = await fetch(path, {method, headers, cache: "no-store",
                                    body: body === undefined ? undefined : JSON.stringify(body)});
    let data = null;
    try { data = await resp.json(); } catch (err) { data = null; }
    if (!resp.ok) {
      const message = (data && data.error) || `${method} ${path}: HTTP ${resp.status}`;
      if (resp.status === 401) askToken();
      throw new ApiError(resp.status, message);
    }
    return data;
  }

  // ------------------------------------------------------------ token (non-loopback binds)
  function askToken() {
    stopStreams("Waiting for the access token…");
    const dialog = $("token-dialog");
    // the server's 401 text is for developers; a person needs to know the token was not accepted
    $("token-error").textContent = token ? "Wrong access token — ask the device owner for the right one." : "";
    if (!dialog.open) dialog.showModal();
    $("token-input").focus();
  }

  $("token-form").addEventListener("submit", (event) => {
    event.preventDefault();
    token = $("token-input").value.trim();
    localStorage.setItem(TOKEN_KEY, token);
    setCookie();
    $("token-dialog").close();
    connect();
  });

  // ------------------------------------------------------------ connection
  function setConnection(text, live) {
    const el = $("connection");
    el.textContent = text;
    el.classList.toggle("live", live);
  }

  // The camera box: a placeholder until the first frame has arrived (never the broken-image alt text).
  function showCamera(on, text) {
    $("frame").classList.toggle("waiting", !on);
    if (text) $("view-placeholder").textContent = text;
    if (on && cameraPoll) { clearInterval(cameraPoll); cameraPoll = null; }
  }

  function stopStreams(why) {
    if (events) { events.close(); events = null; }
    if (statusTimer) { clearTimeout(statusTimer); statusTimer = null; }
    $("live").removeAttribute("src");
    if (cameraPoll) { clearInterval(cameraPoll); cameraPoll = null; }
    showCamera(false, why || "Camera offline");
    setConnection("offline", false);
  }

  function startStreams() {
    const img = $("live");
    showCamera(false, "Connecting to the camera…");
    img.onload = () => { if (img.naturalWidth > 0) showCamera(true); };
    img.onerror = () => {
      showCamera(false, "Camera not reachable — retrying…");
      setTimeout(() => { if (events) img.src = `/stream.mjpg?t=${Date.now()}`; }, 2000);
    };
    img.src = `/stream.mjpg?t=${Date.now()}`;
    if (cameraPoll) clearInterval(cameraPoll);
    cameraPoll = setInterval(() => { if (img.naturalWidth > 0) showCamera(true); }, 200);
    events = new EventSource("/events");
    events.addEventListener("open", () => setConnection("live", true));
    events.addEventListener("prediction", (e) => showPrediction(JSON.parse(e.data)));
    events.addEventListener("view", (e) => showView(JSON.parse(e.data)));
    events.addEventListener("error", () => {
      setConnection("reconnecting", false);
      if (events && events.readyState === EventSource.CLOSED) {  // refused (e.g. 401): check why
        events = null;
        setTimeout(connect, 2000);
      }
    });
  }

  async function connect() {
    if (token) setCookie();
    try {
      await fetchStatus();
    } catch (err) {
      if (err.status !== 401) { setConnection("offline", false); setTimeout(connect, 2000); }
      return;
    }
    if (!events) startStreams();
    scheduleStatus();
  }

  function scheduleStatus() {
    if (statusTimer) clearTimeout(statusTimer);
    statusTimer = setTimeout(async () => {
      statusTimer = null;
      try {
        await fetchStatus();
      } catch (err) {
        if (err.status === 401) return;
        setConnection("offline", false);
      }
      scheduleStatus();
    }, hold ? HOLD_STATUS_MS : STATUS_MS);
  }

  // ------------------------------------------------------------ answer
  function showPrediction(p) {
    const panel = $("answer-panel");
    const answer = $("answer");
    panel.classList.remove("none", "stale");
    lastAnswerAt = performance.now();
    panel.classList.toggle("is-unknown", p.unknown);
    answer.textContent = p.unknown ? "unknown" : p.label;
    answer.dataset.label = p.label;
    answer.dataset.unknown = String(p.unknown);
    answer.dataset.frameTime = String(p.frame_time);
    answer.dataset.frame = String(p.frame);
    // never shown as certain (1.00): no answer is (edge-agent predict caps at 0.9999 the same way)
    const score = Math.min(p.score, 0.99).toFixed(2);
    $("answer-detail").textContent = p.unknown
      ? `not sure: none of the classes fits (score ${score})`
      : `score ${score} · frame ${p.frame}`;
    const label = p.unknown ? "unknown" : p.label;
    if (label !== lastAnnounced) { $("answer-live").textContent = `It sees: ${label}`; lastAnnounced = label; }
    showBars(p.top || [], p.unknown ? null : p.label);
  }

  function showBars(top, winner) {
    const list = $("bars");
    while (list.children.length > top.length) list.lastElementChild.remove();
    top.forEach((entry, i) => {
      let li = list.children[i];
      if (!li) {
        li = document.createElement("li");
        li.innerHTML = '<span class="name"></span><span class="track"><span class="fill"></span></span><span class="pct"></span>';
        list.appendChild(li);
      }
      const pct = Math.min(99, Math.round(entry.p * 100));   // never 100 %: see the score above
      li.querySelector(".name").textContent = entry.label;
      li.querySelector(".fill").style.width = `${Math.max(0, Math.min(100, entry.p * 100))}%`;
      li.querySelector(".pct").textContent = `${pct}%`;
      li.classList.toggle("top", entry.label === winner);
      li.setAttribute("aria-label", `${entry.label} ${pct} percent`);
      li.dataset.label = entry.label;
    });
  }

  function showView(v) {
    const view = $("st-view");
    view.textContent = `${v.fps.toFixed(1)} frames/s (max ${v.max_fps}, ${v.clients} watching)`;
    view.dataset.fps = String(v.fps);
    view.dataset.encoded = String(v.encoded);
    $("view-caption").textContent = v.encoded ? `live · ${v.fps.toFixed(1)} frames/s` : "no frames yet";
    if (v.encoded && $("live").naturalWidth > 0) showCamera(true);  // a multipart stream may fire no load
    const panel = $("answer-panel");
    if (lastAnswerAt && performance.now() - lastAnswerAt > 3000 && !panel.classList.contains("stale")) {
      panel.classList.add("stale");  // the source stopped (or nothing is predicted): say so
      $("answer-detail").textContent = "no new answer for a while: the source has no new frames";
    }
  }

  // ------------------------------------------------------------ status
  const mib = (n) => `${(n / 1048576).toFixed(1)} MiB`;
  const kib = (n) => (n >= 1048576 ? mib(n) : `${(n / 1024).toFixed(1)} KiB`);

  // GET /status; ``asked`` (performance.now() when sent) tells a reply that predates a finished teach.
  async function fetchStatus() {
    const asked = performance.now();
    showStatus(await api("GET", "/status"), asked);
  }

  function showStatus(s, asked) {
    lastStatus = s;
    setConnection(events ? "live" : "connected", true);
    $("model-line").textContent = `${s.model} · ${s.runtime} ${s.precision} · ${s.strategy}`;
    $("st-fps").textContent = `${s.fps.toFixed(1)} frames/s · ${s.frames} frames`;
    $("st-fps").dataset.fps = String(s.fps);
    // Answers per second = loop rate x answers per frame, both counters from the same reply: timing the
    // replies with the browser's clock (their latency jitters) once read 12/s beside a 10 fps loop.
    if (lastRate && s.frames > lastRate.frames) {
      const share = Math.min(1, Math.max(0, (s.predictions - lastRate.predictions) / (s.frames - lastRate.frames)));
      const rate = s.fps * share;
      const every = share > 0 ? Math.round(1 / share) : 0;
      $("st-answers").textContent = `${rate.toFixed(1)}/s · ` + (share >= 0.995 ? "every frame"
        : share > 0 ? `1 in ${every} frames` : "none") + ` · ${s.predictions} total`;
      $("st-answers").dataset.rate = String(rate);
    }
    lastRate = {frames: s.frames, predictions: s.predictions};
    $("st-dropped").textContent = String(s.dropped_frames);
    $("st-rss").textContent = mib(s.rss_bytes);
    $("st-buffer").textContent = `${s.buffer.fill} / ${s.buffer.capacity} rows · ${kib(s.buffer.bytes)}`;
    $("st-step").textContent = `step ${s.step} · ${s.learned_batches} batches` + (s.learning ? " · learning…" : "");
    const ckpt = s.last_checkpoint;
    $("st-checkpoint").textContent = ckpt ? `step ${ckpt.step} at ${new Date(ckpt.time * 1000).toLocaleTimeString()}` : "none yet";
    $("st-model").textContent = s.model;
    $("st-fingerprint").textContent = `${s.fingerprint.slice(0, 16)}…`;
    $("st-fingerprint").title = s.fingerprint;
    showClasses(s.classes);
    showCounter(s);
    showLearning(s, asked);
  }

  // "learning N frames" until the class's sample count has grown by them: then "learned N frames".
  function samplesOf(s, label) {
    const known = s && s.classes.find((c) => c.name === label);
    return known ? known.samples : 0;
  }

  function showLearning(s, asked) {
    if (!learnWatch) return;
    const w = learnWatch;
    if (samplesOf(s, w.label) >= w.before + w.frames) {
      learnWatch = null;
      teachMessage(`learned ${w.frames} frames of “${w.label}”`, false, "learned");
    } else if (!s.learning && asked > w.since) {  // asked after the finish: its batch was queued by then
      learnWatch = null;  // the learner is idle and the frames did not arrive: it failed
      teachMessage(`could not learn “${w.label}” (the device's event log says why)`, true);
    }
  }

  function showCounter(s) {
    const out = $("teach-count");
    if (hold) {
      const mine = (s.teach_pending || []).find((t) => t.label === hold.label);
      if (mine) { out.textContent = `${mine.collected} frames`; out.dataset.collected = String(mine.collected); }
      return;
    }
    const name = $("class-name").value.trim();
    const known = s.classes.find((c) => c.name === name);
    out.textContent = known ? `${known.samples} for “${known.name}”` : "0";
  }

  // ------------------------------------------------------------ classes
  function showClasses(classes) {
    const key = JSON.stringify(classes);
    const datalist = $("known-classes");
    if (key === classesKey || editing !== null) return;  // keep focus and an open rename as they are
    classesKey = key;
    datalist.replaceChildren(...classes.map((c) => { const o = document.createElement("option"); o.value = c.name; return o; }));
    const focused = document.activeElement;
    const refocus = focused && focused.closest("#class-list li")
      ? {name: focused.closest("li").dataset.name, action: focused.dataset.action} : null;
    const list = $("class-list");
    list.replaceChildren(...classes.map(classRow));
    $("classes-empty").hidden = classes.length > 0;
    if (refocus) {
      const again = list.querySelector(`li[data-name="${CSS.escape(refocus.name)}"] [data-action="${refocus.action}"]`);
      if (again) again.focus();
    }
  }

  function button(text, action, handler) {
    const b = document.createElement("button");
    b.type = "button";
    b.textContent = text;
    b.dataset.action = action;
    b.addEventListener("click", handler);
    return b;
  }

  function classRow(c) {
    const li = document.createElement("li");
    li.dataset.name = c.name;
    li.dataset.samples = String(c.samples);
    const name = document.createElement("span");
    name.className = "cname";
    name.textContent = c.name;
    const samples = document.createElement("span");
    samples.className = "samples";
    samples.textContent = `${c.samples} sample${c.samples === 1 ? "" : "s"}`;
    const rename = button("Rename", "rename", () => startRename(li, c.name));
    rename.setAttribute("aria-label", `Rename ${c.name}`);
    const forget = button("Forget", "forget", () => confirmForget(forget, c.name));
    forget.setAttribute("aria-label", `Forget ${c.name}`);
    const shown = button(openSamples === c.name ? "Hide" : "Samples", "samples", () => toggleSamples(c.name));
    shown.setAttribute("aria-label", `Taught samples of ${c.name}`);
    shown.setAttribute("aria-expanded", String(openSamples === c.name));
    li.append(name, samples, shown, rename, forget);
    if (openSamples === c.name) loadSamples(li, c.name);
    return li;
  }

  // ------------------------------------------------------------ taught samples (thumbnails)
  function toggleSamples(name) {
    openSamples = openSamples === name ? null : name;
    classesKey = "";
    if (lastStatus) showClasses(lastStatus.classes);
  }

  async function loadSamples(li, name) {
    const strip = document.createElement("div");
    strip.className = "thumbs";
    strip.setAttribute("role", "list");
    strip.setAttribute("aria-label", `Taught samples of ${name}`);
    li.append(strip);
    try {
      const page = await api("GET", `/classes/${encodeURIComponent(name)}/samples?limit=50`);
      strip.replaceChildren(...page.samples.map((s) => sampleTile(s, name)));
      if (!page.samples.length) strip.textContent = "no samples in the ledger (taught before it)";
      else if (page.total > page.samples.length) strip.append(`… ${page.total - page.samples.length} more`);
    } catch (err) {
      strip.textContent = err.message;
    }
  }

  function sampleTile(s, name) {
    const tile = document.createElement("figure");
    tile.className = "thumb";
    tile.setAttribute("role", "listitem");
    tile.dataset.sample = String(s.id);
    if (s.thumbnail) {
      const img = document.createElement("img");
      img.src = s.thumbnail;          // the token cookie authorises <img>
      img.alt = `sample ${s.id} of ${name}`;
      img.loading = "lazy";
      tile.append(img);
    } else {
      tile.append(`#${s.id}`);
    }
    const del = button("Delete", "delete-sample", async () => {
      try {
        const done = await api("DELETE", `/samples/${s.id}`);
        classMessage(`deleted sample ${s.id} of “${done.name}” (${done.removal})`);
        classesKey = "";
        await fetchStatus();
      } catch (err) { classMessage(err.message, true); }
    });
    del.setAttribute("aria-label", `Delete sample ${s.id} of ${name}`);
    tile.append(del);
    return tile;
  }

  async function undoLastTeach() {
    try {
      const done = await api("POST", "/undo");
      classMessage(`undid the last teach: ${done.samples} sample${done.samples === 1 ? "" : "s"} of “${done.name}” (${done.removal})`);
      classesKey = "";
      await fetchStatus();
    } catch (err) { classMessage(err.message, true); }
  }

  function classMessage(text, error) {
    const el = $("classes-message");
    el.textContent = text;
    el.classList.toggle("error", Boolean(error));
  }

  function startRename(li, name) {
    editing = name;
    const input = document.createElement("input");
    input.value = name;
    input.maxLength = 64;
    input.setAttribute("aria-label", `New name for ${name}`);
    const done = () => { editing = null; classesKey = ""; if (lastStatus) showClasses(lastStatus.classes); };
    const save = async () => {
      const to = input.value.trim();
      if (!to || to === name) { done(); return; }
      try {
        await api("POST", `/classes/${encodeURIComponent(name)}/rename`, {to});
        classMessage(`renamed “${name}” to “${to}”`);
        editing = null;
        await fetchStatus();
      } catch (err) {
        classMessage(err.message, true);
        input.focus();
      }
    };
    input.addEventListener("keydown", (e) => {
      if (e.key === "Enter") { e.preventDefault(); save(); }
      if (e.key === "Escape") { e.preventDefault(); done(); }
    });
    li.replaceChildren(input, button("Save", "save", save), button("Cancel", "cancel", done));
    input.focus();
    input.select();
  }

  function confirmForget(b, name) {
    if (b.dataset.armed !== "1") {
      b.dataset.armed = "1";
      b.textContent = "Really forget?";
      b.classList.add("danger");
      setTimeout(() => { b.dataset.armed = ""; b.textContent = "Forget"; b.classList.remove("danger"); }, 4000);
      return;
    }
    api("POST", `/classes/${encodeURIComponent(name)}/forget`)
      .then(async () => { classMessage(`forgot “${name}”`); await fetchStatus(); })
      .catch((err) => classMessage(err.message, true));
  }

  // ------------------------------------------------------------ hold to record
  $("undo").addEventListener("click", undoLastTeach);
  const holdButton = $("hold");

  function teachMessage(text, error, state) {
    const el = $("teach-message");
    el.textContent = text;
    el.classList.toggle("error", Boolean(error));
    el.dataset.state = error ? "error" : state || "";
  }

  function startHold() {
    if (hold) return;
    const label = $("class-name").value.trim();
    if (!label) {
      teachMessage("type a class name first", true);
      $("class-name").focus();
      return;
    }
    const started = api("POST", "/teach", {label, seconds: HOLD_MAX_S});
    hold = {label, started, timer: setTimeout(endHold, HOLD_MAX_S * 1000 - 250)};
    holdButton.classList.add("recording");
    holdButton.setAttribute("aria-pressed", "true");
    holdButton.textContent = "Recording… release to learn";
    $("teach-count").textContent = "0 frames";
    teachMessage(`recording “${label}”`, false, "recording");
    started.catch((err) => { teachMessage(err.message, true); });
    scheduleStatus();
  }

  function endHold() {
    if (!hold) return;
    const h = hold;
    hold = null;
    clearTimeout(h.timer);
    holdButton.classList.remove("recording");
    holdButton.setAttribute("aria-pressed", "false");
    holdButton.textContent = "Hold to record";
    const before = samplesOf(lastStatus, h.label);  // nothing of this hold is learned before its finish
    h.started
      .then(() => api("POST", "/teach/finish", {label: h.label}))
      .then((r) => {
        $("teach-count").textContent = `${r.frames} frames`;
        $("teach-count").dataset.collected = String(r.frames);
        if (r.frames) {
          learnWatch = {label: r.label, frames: r.frames, before, since: performance.now()};
          teachMessage(`learning ${r.frames} frames of “${r.label}”…`, false, "learning");
        } else {
          teachMessage("no frames collected: hold it longer", true);
        }
        return fetchStatus();
      })
      .catch((err) => { if (!(err instanceof ApiError) || err.status !== 401) teachMessage(err.message, true); });
  }

  holdButton.addEventListener("pointerdown", (e) => {
    if (e.button !== 0) return;
    e.preventDefault();
    holdButton.focus();
    holdButton.setPointerCapture(e.pointerId);
    startHold();
  });
  for (const type of ["pointerup", "pointercancel", "lostpointercapture"]) holdButton.addEventListener(type, endHold);
  holdButton.addEventListener("contextmenu", (e) => e.preventDefault());
  holdButton.addEventListener("keydown", (e) => {
    if (e.key !== " " && e.key !== "Enter") return;
    e.preventDefault();
    if (!e.repeat) startHold();
  });
  holdButton.addEventListener("keyup", (e) => {
    if (e.key !== " " && e.key !== "Enter") return;
    e.preventDefault();
    endHold();
  });
  holdButton.addEventListener("blur", endHold);
  $("teach-form").addEventListener("submit", (e) => { e.preventDefault(); holdButton.focus(); });
  $("class-name").addEventListener("input", () => { if (lastStatus) showCounter(lastStatus); });

  connect();
})();
