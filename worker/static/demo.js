// The worker's demo client: WHIP-style offer/answer (RFC 9725) with trickle ICE over
// PATCH, the microphone as the sent track, the agent's audio played back, and the
// session events of the "events" data channel (worker/README.md lists them) shown as a
// conversation: who said what, the agent's state and each turn's latency. A failed call
// is explained in words; the worker's error code is kept beside them.
//
// Every URL is relative to the page, so it works the same over HTTP and HTTPS.
//
// Everything the page learns is also kept in `window.voiceDemo`, which the end-to-end
// tests read through the DevTools protocol.
"use strict";

// The same templates as the worker's router (worker/src/signaling.rs); a test checks it.
const OFFER_PATH = "/v1/sessions/{namespace}/{name}/offer";
const ICE_SERVERS_PATH = "/v1/sessions/{namespace}/{name}/ice-servers";
const TRICKLE_CONTENT_TYPE = "application/trickle-ice-sdpfrag";

// Why a call failed, by the worker's error code (worker/src/signaling.rs) or one of the
// page's own (ICE, microphone, network), in words a person can act on.
const FAILURES = {
  TokenExpired: "The join link has expired: ask for a new session.",
  TokenMissing: "No join token was given: open the link you were sent, or paste its token.",
  TokenMalformed: "The join token is not valid: check that the whole link was copied, or ask for a new session.",
  TokenBadSignature: "The join token was not issued for this worker: ask for a new session.",
  TokenUnknownKey: "The join token was signed with a key this worker does not know: ask for a new session.",
  TokenWrongSession: "The join token belongs to another session: use the link made for this one.",
  SessionNotFound: "This session is not reserved on this worker (it may have ended): ask for a new session.",
  AlreadyConnected: "This session is already in a call (another tab or device): hang up there first.",
  Draining: "This worker is shutting down and takes no new calls: ask for a new session.",
  NotConfigured: "This worker cannot check join tokens (it has no signing key): tell whoever runs it.",
  IceFailed:
    "Could not reach the worker over the network (ICE failed): a firewall or NAT blocks the media path; try another network or a TURN server.",
  IceLost: "The network path to the worker was lost (ICE failed): check your connection and call again.",
  InsecureContext: "This browser gives the microphone only to HTTPS pages and localhost: open this page over HTTPS.",
  MicrophoneDenied: "The microphone was not allowed: allow it for this page and call again.",
  NoMicrophone: "No microphone was found: connect one and call again.",
  Unreachable: "Could not reach the worker: check the address and your connection.",
};

// The agent's pipeline states (the "state" event) as a person says them.
const AGENT_STATES = {
  IDLE: "idle",
  LISTENING: "listening",
  PROCESSING: "thinking",
  SPEAKING: "speaking",
  ERROR: "error",
};

const demo = (window.voiceDemo = {
  status: "idle",
  connectionState: "new",
  events: [],
  // {code, message, detail}: the worker's (or the page's) code, the sentence shown, the raw text.
  errors: [],
  // {who: "user"|"agent", text, turnId, latencyMs}: what the conversation shows.
  conversation: [],
  agentState: null,
  // Every state the agent went through, in order (repeats collapsed).
  agentStates: [],
  pipeline: null,
  provider: null,
  inboundBytes: 0,
  outboundBytes: 0,
  audioLevel: 0,
  maxAudioLevel: 0,
  trickled: 0,
  trickleStatuses: [],
  iceServerUrls: [],
  iceTransportPolicy: "all",
  localCandidateType: null,
  localCandidateProtocol: null,
  remoteCandidateAddress: null,
  iceErrors: [],
});

const $ = (id) => document.getElementById(id);
let call = null;

function setStatus(text, isError) {
  demo.status = text;
  $("status").textContent = text;
  $("status").className = isError ? "error" : "";
}

function logEvent(line) {
  const events = $("events");
  events.textContent += line + "\n";
  events.scrollTop = events.scrollHeight;
}

// The call failed: say why in words (by `code`), keep the code and the raw `detail`.
function fail(code, detail) {
  const message = FAILURES[code] || "The call failed: " + detail;
  demo.errors.push({ code, message, detail });
  setStatus(message, true);
  logEvent("error " + code + ": " + detail);
}

// A request the worker refused: its JSON {code, message} body, or the bare status.
class Refused extends Error {
  constructor(code, detail) {
    super(detail);
    this.code = code;
  }
}

async function refused(what, response) {
  const text = await response.text();
  try {
    const body = JSON.parse(text);
    return new Refused(body.code || "Http" + response.status, what + " refused: " + response.status + " " + body.code + ": " + body.message);
  } catch (_) {
    return new Refused("Http" + response.status, what + " refused: " + response.status + " " + text);
  }
}

// Why `connect` threw, as a code of FAILURES (or the error's name).
function failureCode(error) {
  if (error instanceof Refused) return error.code;
  if (error.name === "NotAllowedError") return "MicrophoneDenied";
  if (error.name === "NotFoundError") return "NoMicrophone";
  // fetch rejects with a TypeError when it gets no answer at all.
  if (error instanceof TypeError) return "Unreachable";
  return error.name || "Error";
}

function showBackend() {
  $("provider").textContent = demo.provider ? demo.provider + (demo.pipeline ? " (" + demo.pipeline + ")" : "") : "unknown";
}

function setAgentState(state, detail) {
  const word = AGENT_STATES[state] || String(state).toLowerCase();
  demo.agentState = word;
  if (demo.agentStates[demo.agentStates.length - 1] !== word) demo.agentStates.push(word);
  $("agent-state").textContent = word + (state === "ERROR" && detail ? ": " + detail : "");
  $("agent-state").className = state === "ERROR" ? "error" : "";
}

// The list item of each conversation entry (kept out of the entries, which tests read as JSON).
const lineElements = new WeakMap();

// One line of the conversation; `entry` is kept in demo.conversation and redrawn in place
// when it changes (the latency comes before the agent's words, with its first audio).
function addLine(entry) {
  demo.conversation.push(entry);
  const li = document.createElement("li");
  lineElements.set(entry, li);
  $("conversation").appendChild(li);
  drawLine(entry);
  return entry;
}

function drawLine(entry) {
  const li = lineElements.get(entry);
  li.className = entry.who;
  li.replaceChildren();
  const who = document.createElement("span");
  who.className = "who";
  who.textContent = { user: "You", agent: "Agent", note: "" }[entry.who];
  li.append(who, entry.text || "…");
  if (entry.latencyMs != null) {
    const latency = document.createElement("span");
    latency.className = "latency";
    latency.textContent = "answered " + Math.round(entry.latencyMs) + " ms after you stopped";
    li.append(latency);
  }
  li.scrollIntoView({ block: "nearest" });
}

// The agent's line of `turnId`, made on first mention.
function agentLine(turnId) {
  const found = turnId && demo.conversation.find((e) => e.who === "agent" && e.turnId === turnId);
  return found || addLine({ who: "agent", text: "", turnId, latencyMs: null });
}

// Shows one session event (worker/README.md, "Session events") in the conversation.
function onSessionEvent(event) {
  switch (event.type) {
    case "connected":
      demo.pipeline = event.pipeline || null;
      demo.provider = event.provider || null;
      showBackend();
      break;
    case "state":
      if (event.provider && !demo.provider) {
        demo.provider = event.provider;
        showBackend();
      }
      setAgentState(event.state, event.detail);
      break;
    case "transcript":
      if (!event.text) break;
      if (event.role === "user") {
        addLine({ who: "user", text: event.text, turnId: event.turn_id, latencyMs: null });
      } else {
        const line = agentLine(event.turn_id);
        line.text = event.text;
        drawLine(line);
      }
      break;
    case "latency": {
      // total_ms: from the end of the user's speech to the reply's first audio frame.
      const line = agentLine(event.turn_id);
      line.latencyMs = event.total_ms;
      drawLine(line);
      break;
    }
    case "interrupted": {
      const line = agentLine(event.turn_id);
      line.text = (event.heard || line.text || "") + " (interrupted)";
      drawLine(line);
      break;
    }
    case "error":
      addLine({ who: "note", text: "That turn failed (" + event.reason + "): " + event.message, turnId: event.turn_id, latencyMs: null });
      break;
    case "ended":
      setStatus("the worker ended the call (" + event.reason + ")");
      break;
  }
}

function sessionUrl(template, session) {
  const parts = session.trim().split("/");
  if (parts.length !== 2 || !parts[0] || !parts[1]) {
    throw new Error("the session must be namespace/name, not " + JSON.stringify(session));
  }
  return template.replace("{namespace}", encodeURIComponent(parts[0])).replace(
    "{name}",
    encodeURIComponent(parts[1]),
  );
}

function offerUrl(session) {
  return sessionUrl(OFFER_PATH, session);
}

// The session's STUN/TURN servers, with credentials minted for this session: they must be
// known before the offer, because the browser gathers relay candidates only from the
// servers its peer connection was built with.
async function fetchIceServers(session, token) {
  const response = await fetch(sessionUrl(ICE_SERVERS_PATH, session), {
    headers: { Authorization: "Bearer " + token },
  });
  if (response.status !== 200) throw await refused("ICE servers", response);
  return (await response.json()).iceServers || [];
}

// An error body from the worker is JSON {code, message}; say both (for the event log).
async function describe(response) {
  const text = await response.text();
  try {
    const body = JSON.parse(text);
    return response.status + " " + body.code + ": " + body.message;
  } catch (_) {
    return response.status + " " + text;
  }
}

// Sends the candidates gathered so far as one sdpfrag PATCH (RFC 8840 / RFC 9725 §4.3.2).
async function trickle(state) {
  if (!state.location || state.sending || state.pending.length === 0) return;
  const lines = state.pending.splice(0);
  state.sending = true;
  const body =
    ["a=ice-ufrag:" + state.ufrag, "a=ice-pwd:" + state.pwd, "m=audio 9 UDP/TLS/RTP/SAVPF 0", "a=mid:" + state.mid]
      .concat(lines)
      .join("\r\n") + "\r\n";
  const headers = { "Content-Type": TRICKLE_CONTENT_TYPE, Authorization: "Bearer " + state.token };
  if (state.etag) headers["If-Match"] = state.etag;
  try {
    const response = await fetch(state.location, { method: "PATCH", headers, body });
    demo.trickleStatuses.push(response.status);
    if (response.status === 204) {
      demo.trickled += lines.length;
    } else {
      logEvent("trickle ICE refused: " + (await describe(response)));
    }
  } catch (e) {
    logEvent("trickle ICE failed: " + e);
  } finally {
    state.sending = false;
  }
  trickle(state);
}

async function connect(session, token) {
  setStatus("asking for the microphone");
  if (!navigator.mediaDevices) throw new Refused("InsecureContext", "navigator.mediaDevices is missing (not a secure context)");
  const microphone = await navigator.mediaDevices.getUserMedia({ audio: true, video: false });
  const iceServers = await fetchIceServers(session, token);
  demo.iceServerUrls = iceServers.flatMap((server) => server.urls);
  // `?relay=1` sends everything through the TURN server: a check that TURN works.
  demo.iceTransportPolicy = new URLSearchParams(window.location.search).get("relay") ? "relay" : "all";
  const pc = new RTCPeerConnection({ iceServers, iceTransportPolicy: demo.iceTransportPolicy });
  const state = { pc, token, microphone, location: null, etag: null, pending: [], sending: false, gathered: 0 };
  call = state;
  for (const track of microphone.getAudioTracks()) pc.addTrack(track, microphone);

  const channel = pc.createDataChannel("events");
  channel.onmessage = (message) => {
    let event;
    try {
      event = JSON.parse(message.data);
    } catch (_) {
      event = { type: "unparsed", data: String(message.data) };
    }
    demo.events.push(event);
    logEvent(JSON.stringify(event));
    onSessionEvent(event);
  };

  pc.ontrack = (event) => {
    const audio = $("remote");
    audio.srcObject = event.streams[0] || new MediaStream([event.track]);
    audio.play().catch((e) => logEvent("autoplay blocked, click the page: " + e));
  };
  pc.onconnectionstatechange = () => {
    demo.connectionState = pc.connectionState;
    if (pc.connectionState === "connected") state.connected = true;
    if (pc.connectionState === "failed") {
      const servers = demo.iceErrors.length ? " (" + demo.iceErrors.join("; ") + ")" : "";
      fail(state.connected ? "IceLost" : "IceFailed", "ICE failed: connectionState failed" + servers);
    } else {
      setStatus(pc.connectionState === "connected" ? "connected: talk now" : pc.connectionState);
    }
    if (["failed", "closed"].includes(pc.connectionState)) stopStats(state);
  };
  // A STUN/TURN server that refuses (a TURN credential that is wrong or expired: 401).
  pc.onicecandidateerror = (event) => {
    const text = event.url + " answered " + event.errorCode + " " + (event.errorText || "");
    demo.iceErrors.push(text.trim());
    logEvent("ICE server error: " + text);
    // Gathering may already have ended empty-handed: name the refusal too.
    if (state.unreachable) fail("IceFailed", "ICE failed: " + text.trim());
  };
  pc.onicecandidate = (event) => {
    if (event.candidate && event.candidate.candidate) {
      state.gathered += 1;
      state.pending.push("a=" + event.candidate.candidate);
    } else if (!event.candidate) {
      state.pending.push("a=end-of-candidates");
      if (state.gathered === 0) {
        state.unreachable = true;
        fail(
          "IceFailed",
          "ICE failed: this browser found no address to reach the worker from" +
            (demo.iceErrors.length ? " (" + demo.iceErrors.join("; ") + ")" : "") +
            (demo.iceTransportPolicy === "relay" ? "; relay only was asked, so the TURN server must accept us" : ""),
        );
      }
    }
    trickle(state);
  };

  const offer = await pc.createOffer();
  await pc.setLocalDescription(offer);
  const sdp = pc.localDescription.sdp;
  state.ufrag = (sdp.match(/a=ice-ufrag:(\S+)/) || [])[1];
  state.pwd = (sdp.match(/a=ice-pwd:(\S+)/) || [])[1];
  state.mid = (sdp.match(/a=mid:(\S+)/) || [, "0"])[1];

  setStatus("sending the offer");
  const response = await fetch(offerUrl(session), {
    method: "POST",
    headers: { "Content-Type": "application/sdp", Authorization: "Bearer " + token },
    body: sdp,
  });
  if (response.status !== 201) {
    hangUp();
    throw await refused("offer", response);
  }
  state.location = new URL(response.headers.get("Location"), window.location.href).href;
  state.etag = response.headers.get("ETag");
  await pc.setRemoteDescription({ type: "answer", sdp: await response.text() });
  setStatus("connecting");
  trickle(state);
  state.stats = setInterval(() => readStats(state), 500);
  $("hangup").disabled = false;
}

async function readStats(state) {
  const report = await state.pc.getStats();
  report.forEach((entry) => {
    if (entry.type === "inbound-rtp" && entry.kind === "audio") {
      demo.inboundBytes = entry.bytesReceived || 0;
      demo.audioLevel = entry.audioLevel || 0;
      demo.maxAudioLevel = Math.max(demo.maxAudioLevel, demo.audioLevel);
    } else if (entry.type === "outbound-rtp" && entry.kind === "audio") {
      demo.outboundBytes = entry.bytesSent || 0;
    } else if (entry.type === "transport" && entry.selectedCandidatePairId) {
      const pair = report.get(entry.selectedCandidatePairId);
      const local = pair && report.get(pair.localCandidateId);
      const remote = pair && report.get(pair.remoteCandidateId);
      if (local) demo.localCandidateType = local.candidateType;
      // "udp" or "tcp": which path the call took (ICE-TCP when UDP is blocked).
      if (local) demo.localCandidateProtocol = local.protocol;
      if (remote) demo.remoteCandidateAddress = (remote.address || remote.ip) + ":" + remote.port;
    }
  });
  $("meter").firstElementChild.style.width = Math.min(100, demo.audioLevel * 300) + "%";
  $("stats").textContent =
    "sent " + demo.outboundBytes + " B, received " + demo.inboundBytes + " B, agent level " + demo.audioLevel.toFixed(3);
}

function stopStats(state) {
  if (state.stats) clearInterval(state.stats);
  state.stats = null;
}

function hangUp() {
  const state = call;
  call = null;
  $("hangup").disabled = true;
  if (!state) return;
  stopStats(state);
  if (state.location) {
    fetch(state.location, { method: "DELETE", headers: { Authorization: "Bearer " + state.token } }).catch(() => {});
  }
  state.microphone.getTracks().forEach((track) => track.stop());
  state.pc.close();
  demo.connectionState = "closed";
  setStatus("hung up");
}

$("form").addEventListener("submit", (event) => {
  event.preventDefault();
  if (call) return;
  $("connect").disabled = true;
  connect($("session").value, $("token").value.trim())
    .catch((e) => fail(failureCode(e), e.message || String(e)))
    .finally(() => {
      $("connect").disabled = false;
    });
});
$("hangup").addEventListener("click", hangUp);
window.addEventListener("pagehide", hangUp);

// A link may carry the session and token; the token is then taken out of the address bar
// (and so out of the history) and the call starts at once.
const params = new URLSearchParams(window.location.search);
if (params.get("session")) $("session").value = params.get("session");
if (params.get("token")) {
  $("token").value = params.get("token");
  const kept = new URLSearchParams();
  if (params.get("session")) kept.set("session", params.get("session"));
  if (params.get("relay")) kept.set("relay", params.get("relay"));
  history.replaceState(null, "", window.location.pathname + (kept.toString() ? "?" + kept : ""));
  if ($("session").value) $("form").requestSubmit();
}
