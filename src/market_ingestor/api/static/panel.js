// The market-ingestor control panel: polls the API's /api/v1/status, sends control commands, and draws a live
// candlestick chart from the push gateway (docs/push.md). Plain browser JavaScript: no build step, no library,
// nothing loaded from the internet. Text from the server is set with textContent, never parsed as HTML.
"use strict";

(() => {
  const API = "../api/v1/";  // relative to /panel/, so the panel also works behind a path prefix
  const POLL_MS = 2000;
  const MAX_CANDLES = 120;
  const KEY_STORE = "market-ingestor.api-key";
  const SYMBOL_STORE = "market-ingestor.chart-symbol";
  const UNIT_MS = { s: 1e3, m: 6e4, h: 36e5, d: 864e5, w: 6048e5 };
  const COLORS = { up: "#26a69a", down: "#ef5350", grid: "#21262d", text: "#8b949e", last: "#58a6ff" };

  const $ = (id) => document.getElementById(id);
  let apiKey = localStorage.getItem(KEY_STORE) || "";
  let status = null;

  // --- helpers -------------------------------------------------------------------------------------------------

  function el(tag, props, ...children) {
    const node = document.createElement(tag);
    for (const [name, value] of Object.entries(props || {})) {
      if (name === "dataset") Object.assign(node.dataset, value);
      else if (name === "class") node.className = value;
      else if (name.startsWith("on")) node.addEventListener(name.slice(2), value);
      else node.setAttribute(name, value);
    }
    for (const child of children) node.append(child instanceof Node ? child : document.createTextNode(String(child)));
    return node;
  }

  async function api(path, options = {}) {
    const headers = Object.assign({}, options.headers);
    if (apiKey) headers["X-API-Key"] = apiKey;
    const response = await fetch(API + path, Object.assign({}, options, { headers }));
    const body = await response.json().catch(() => ({ error: `${response.status} ${response.statusText}` }));
    if (!response.ok) throw new Error(body.error || `HTTP ${response.status}`);
    return body;
  }

  const fixed = (value, digits) => (value === null || value === undefined ? "–" : value.toFixed(digits));
  function seconds(value) {
    if (value === null || value === undefined) return "–";
    if (value < 1) return `${Math.round(value * 1000)} ms`;
    return value < 10 ? `${value.toFixed(1)} s` : `${Math.round(value)} s`;
  }

  function setPill(node, text, cls) {
    node.textContent = text;
    node.className = `pill ${cls}`;
  }

  // --- the status poll ----------------------------------------------------------------------------------------

  async function poll() {
    try {
      status = await api("status");
      render(status);
      setPill($("health"), `live · ${new Date(status.time_ms).toLocaleTimeString()}`, "ok");
    } catch (error) {
      setPill($("health"), `API: ${error.message}`, "bad");
    } finally {
      clearTimeout(poll.timer);
      poll.timer = setTimeout(poll, POLL_MS);
    }
  }

  function render(s) {
    renderConnectors(s.connectors);
    renderExchanges(s.exchanges, s.connectors);
    renderThroughput(s.throughput);
    renderLag(s.lag);
    renderChartChoices(s);
    const errors = $("errors");
    errors.replaceChildren(...s.errors.map((text) => el("li", { class: "error" }, text)));
    $("errors-card").hidden = s.errors.length === 0;
  }

  function renderConnectors(connectors) {
    const rows = connectors.map((c) => {
      const state = c.stale ? "stale" : c.state;
      return el("tr", { dataset: { exchange: c.exchange, instance: c.instance, state } },
        el("td", { title: `ingest instance ${c.instance}` }, c.exchange, el("small", { class: "muted" }, ` ${c.instance}`)),
        el("td", {}, el("span", { class: `pill ${state}` }, c.stale ? `${c.state} (no report for ${seconds(c.report_age_s)})` : c.state)),
        el("td", { class: "num" }, `${c.connected}/${c.connections}`),
        el("td", { class: "num" }, c.reconnects),
        el("td", { class: "num" }, seconds(c.last_message_age_s)),
        el("td", { class: "num" }, fixed(c.frames_per_s, 1)),
        el("td", { class: "num" }, fixed(c.events_per_s, 1)));
    });
    if (!rows.length) rows.push(el("tr", {}, el("td", { colspan: 7, class: "muted" }, "no ingest process has reported yet")));
    $("connectors").tBodies[0].replaceChildren(...rows);
  }

  function renderExchanges(exchanges, connectors) {
    const subscribed = new Set();
    for (const c of connectors) if (!c.stale) for (const symbol of c.symbols) subscribed.add(`${c.exchange}.${symbol}`);
    const select = $("add-exchange");
    const chosen = select.value;
    select.replaceChildren(...exchanges.map((x) => el("option", { value: x.exchange }, x.exchange)));
    if (chosen) select.value = chosen;
    $("exchanges").replaceChildren(...exchanges.filter((x) => x.enabled || x.symbols.length).map((x) =>
      el("div", { class: `exchange${x.enabled ? "" : " disabled"}`, dataset: { exchange: x.exchange } },
        el("div", { class: "exchange-head" },
          el("strong", {}, x.exchange),
          el("span", { class: `pill ${x.enabled ? "ok" : "stopped"}` }, x.enabled ? "enabled" : "disabled"),
          el("button", { type: "button", onclick: () => control("exchanges", { action: x.enabled ? "remove" : "add", exchange: x.exchange }) },
            x.enabled ? "disable" : "enable")),
        el("ul", { class: "symbols" }, ...x.symbols.map((symbol) => {
          const live = subscribed.has(`${x.exchange}.${symbol}`);
          return el("li", { dataset: { symbol, subscribed: live }, title: live ? "subscribed" : "not subscribed (yet)" },
            el("span", { class: `dot${live ? " on" : ""}` }), symbol,
            el("button", { type: "button", title: `remove ${symbol}`, "aria-label": `remove ${symbol}`,
              onclick: () => control("symbols", { action: "remove", exchange: x.exchange, symbol }) }, "×"));
        })))));
  }

  function renderThroughput(rows) {
    const top = Math.max(1, ...rows.map((r) => r.per_s));
    $("throughput").tBodies[0].replaceChildren(...rows.map((r) =>
      el("tr", { dataset: { stage: r.stage, direction: r.direction, topic: r.topic, rate: r.per_s } },
        el("td", {}, r.stage), el("td", { class: "muted" }, r.direction), el("td", {}, r.topic),
        el("td", { class: "num" }, fixed(r.per_s, 1)),
        el("td", {}, el("div", { class: "bar", style: `width:${(100 * r.per_s) / top}%` })))));
  }

  function renderLag(rows) {
    $("lag").tBodies[0].replaceChildren(...rows.map((r) => {
      const worst = Math.max(0, ...r.partitions.map((p) => p.lag));
      return el("tr", { dataset: { stage: r.stage, topic: r.topic, lag: r.lag } },
        el("td", {}, r.stage), el("td", { class: "muted" }, r.group), el("td", {}, r.topic),
        el("td", { class: "num" }, r.lag),
        el("td", { class: "num", title: r.partitions.map((p) => `${p.partition}: ${p.lag}`).join("\n") },
          `${r.partitions.length} (max ${worst})`));
    }));
  }

  // --- control commands ---------------------------------------------------------------------------------------

  async function control(what, command) {
    const message = $("control-message");
    message.className = "";
    message.textContent = `${command.action} ${command.symbol || command.exchange}…`;
    try {
      const result = await api(`control/${what}`, {
        method: "POST", headers: { "Content-Type": "application/json" }, body: JSON.stringify(command),
      });
      message.textContent = `${command.action} ${command.exchange} ${command.symbol || ""}: ${result.applied ? "applied" : "sent (not confirmed yet)"}`;
      if (status) {
        status.exchanges = status.exchanges.map((x) => (x.exchange === result.state.exchange ? result.state : x));
        render(status);
      }
      poll();
      return true;
    } catch (error) {
      message.className = "error";
      message.textContent = error.message;
      return false;
    }
  }

  $("add-form").addEventListener("submit", async (event) => {
    event.preventDefault();
    const input = $("add-symbol");
    const symbol = input.value.trim().toUpperCase();
    if (await control("symbols", { action: "add", exchange: $("add-exchange").value, symbol })) input.value = "";
  });

  const keyInput = $("api-key");
  keyInput.value = apiKey;
  keyInput.addEventListener("change", () => {
    apiKey = keyInput.value.trim();
    localStorage.setItem(KEY_STORE, apiKey);
    poll();
    chart.connect();
  });

  // --- the chart ----------------------------------------------------------------------------------------------

  function renderChartChoices(s) {
    const symbols = s.exchanges.filter((x) => x.enabled).flatMap((x) => x.symbols.map((symbol) => `${x.exchange}.${symbol}`));
    fillSelect($("chart-symbol"), symbols, chart.symbol || localStorage.getItem(SYMBOL_STORE));
    fillSelect($("chart-interval"), s.intervals, chart.interval || (s.intervals.includes("1m") ? "1m" : s.intervals[0]));
    const symbol = $("chart-symbol").value, interval = $("chart-interval").value;
    if (symbol && interval && (symbol !== chart.symbol || interval !== chart.interval)) chart.show(symbol, interval);
  }

  function fillSelect(select, values, wanted) {
    const current = [...select.options].map((o) => o.value).join("\n");
    if (current !== values.join("\n")) select.replaceChildren(...values.map((v) => el("option", { value: v }, v)));
    if (wanted && values.includes(wanted)) select.value = wanted;
  }

  $("chart-symbol").addEventListener("change", (e) => {
    localStorage.setItem(SYMBOL_STORE, e.target.value);
    chart.show(e.target.value, chart.interval);
  });
  $("chart-interval").addEventListener("change", (e) => chart.show(chart.symbol, e.target.value));

  function intervalMs(name) {
    const match = /^(\d+)([smhdw])$/.exec(name);
    return match ? Number(match[1]) * UNIT_MS[match[2]] : 6e4;
  }

  const chart = {
    symbol: null, interval: null, ws: null, candles: new Map(), retryMs: 1000, frame: 0, updates: 0,

    show(symbol, interval) {
      this.symbol = symbol;
      this.interval = interval;
      this.candles = new Map();
      this.updates = 0;
      this.draw();
      this.loadHistory(symbol, interval);
      this.connect();
    },

    pushUrl() {
      let url = status.push.url || `${location.protocol === "https:" ? "wss" : "ws"}://${location.hostname}:${status.push.port}/`;
      if (status.push.auth && apiKey) url += `${url.includes("?") ? "&" : "?"}api_key=${encodeURIComponent(apiKey)}`;
      return url;
    },

    connect() {
      if (!status || !this.symbol) return;
      if (this.ws) {
        this.ws.onclose = null;
        this.ws.close();
      }
      const ws = (this.ws = new WebSocket(this.pushUrl()));
      const channel = `kline.${this.interval}`;
      this.setState("connecting to the push gateway…");
      ws.onopen = () => {
        ws.send(JSON.stringify({ action: "subscribe", channels: [channel], symbols: [this.symbol], id: 1 }));
      };
      ws.onmessage = (event) => {
        const message = JSON.parse(event.data);
        if (message.type === "update" && message.channel === channel && message.symbol === this.symbol) {
          this.retryMs = 1000;
          this.updates += 1;
          this.add(message.data, Math.round(message.data.open_time / 1e6));
        } else if (message.type === "subscribed") {
          this.setState(`live · ${channel}`);
        } else if (message.type === "error") {
          this.setState(`push: ${message.reason}`);
        }
      };
      ws.onclose = (event) => {
        if (this.ws !== ws) return;
        this.setState(`push gateway closed (${event.code}${event.reason ? ` ${event.reason}` : ""}); retrying`);
        setTimeout(() => this.ws === ws && this.connect(), this.retryMs);
        this.retryMs = Math.min(30000, this.retryMs * 2);
      };
    },

    async loadHistory(symbol, interval) {
      const [exchange, name] = symbol.split(/\.(.*)/s);
      const from = Date.now() - MAX_CANDLES * intervalMs(interval);
      try {
        const page = await api(`klines/${exchange}/${encodeURIComponent(name)}?interval=${interval}&from=${from}&limit=${MAX_CANDLES}`);
        if (symbol !== this.symbol || interval !== this.interval) return;
        for (const k of page.data) if (!this.candles.has(k.open_time_ms)) this.add(k, k.open_time_ms);
      } catch (error) {
        // No stored history (no sink running, a new symbol): the chart fills from live updates alone.
      }
    },

    add(k, openMs) {
      const old = this.candles.get(openMs);
      // Keep the latest version of a window: the highest (closed, revision), as docs/push.md says.
      if (old && (old.closed && !k.closed || (old.closed === k.closed && old.revision > k.revision))) return;
      this.candles.set(openMs, {
        t: openMs, o: Number(k.open), h: Number(k.high), l: Number(k.low), c: Number(k.close), close: k.close,
        v: Number(k.volume), closed: k.closed, revision: k.revision,
      });
      if (this.candles.size > MAX_CANDLES) {
        const oldest = Math.min(...this.candles.keys());
        this.candles.delete(oldest);
      }
      if (!this.frame) this.frame = requestAnimationFrame(() => { this.frame = 0; this.draw(); });
    },

    setState(text) {
      $("chart-state").textContent = text;
    },

    draw() {
      const canvas = $("chart");
      const ratio = window.devicePixelRatio || 1;
      const width = canvas.clientWidth, height = canvas.clientHeight;
      canvas.width = Math.round(width * ratio);
      canvas.height = Math.round(height * ratio);
      const g = canvas.getContext("2d");
      g.setTransform(ratio, 0, 0, ratio, 0, 0);
      g.clearRect(0, 0, width, height);
      const candles = [...this.candles.values()].sort((a, b) => a.t - b.t);
      canvas.dataset.candles = candles.length;  // for tests and curious readers: what is drawn
      canvas.dataset.updates = this.updates;  // kline updates received from the push gateway
      g.font = "12px system-ui, sans-serif";
      if (!candles.length) {
        g.fillStyle = COLORS.text;
        g.fillText(this.symbol ? `waiting for ${this.symbol} ${this.interval} klines…` : "no symbol", 16, 24);
        $("chart-last").textContent = "";
        return;
      }
      const axis = 72, bottom = 22, volumeH = Math.round((height - bottom) * 0.18);
      const plotW = width - axis, priceH = height - bottom - volumeH - 8;
      let low = Math.min(...candles.map((c) => c.l)), high = Math.max(...candles.map((c) => c.h));
      if (high === low) { high += Math.abs(high) * 1e-4 || 1; low -= Math.abs(low) * 1e-4 || 1; }
      const pad = (high - low) * 0.06;
      low -= pad; high += pad;
      const y = (price) => 6 + ((high - price) / (high - low)) * (priceH - 6);
      const slots = Math.max(candles.length, 40);
      const slot = plotW / slots;
      const body = Math.max(1, Math.floor(slot * 0.7));
      const x0 = plotW - candles.length * slot;  // newest at the right edge
      const topVolume = Math.max(...candles.map((c) => c.v)) || 1;

      g.strokeStyle = COLORS.grid;
      g.fillStyle = COLORS.text;
      g.lineWidth = 1;
      const ticks = 5;
      for (let i = 0; i <= ticks; i++) {
        const price = low + ((high - low) * i) / ticks, py = Math.round(y(price)) + 0.5;
        g.beginPath(); g.moveTo(0, py); g.lineTo(plotW, py); g.stroke();
        g.fillText(formatPrice(price, high - low), plotW + 6, py + 4);
      }
      const labelEvery = Math.ceil(90 / slot);
      candles.forEach((c, i) => {
        const cx = Math.floor(x0 + i * slot + slot / 2);
        const color = c.c >= c.o ? COLORS.up : COLORS.down;
        g.fillStyle = color;
        g.fillRect(cx, Math.round(y(c.h)), 1, Math.max(1, Math.round(y(c.l)) - Math.round(y(c.h))));
        const top = Math.round(y(Math.max(c.o, c.c))), bot = Math.round(y(Math.min(c.o, c.c)));
        g.fillRect(cx - Math.floor(body / 2), top, body, Math.max(1, bot - top));
        const vh = Math.max(1, Math.round((c.v / topVolume) * volumeH));
        g.globalAlpha = 0.35;
        g.fillRect(cx - Math.floor(body / 2), height - bottom - vh, body, vh);
        g.globalAlpha = 1;
        if ((candles.length - 1 - i) % labelEvery === 0) {
          g.fillStyle = COLORS.text;
          const time = new Date(c.t);
          g.fillText(`${String(time.getHours()).padStart(2, "0")}:${String(time.getMinutes()).padStart(2, "0")}`, cx - 15, height - 6);
        }
      });
      const last = candles[candles.length - 1];
      const ly = Math.round(y(last.c)) + 0.5;
      g.strokeStyle = COLORS.last;
      g.setLineDash([4, 4]);
      g.beginPath(); g.moveTo(0, ly); g.lineTo(plotW, ly); g.stroke();
      g.setLineDash([]);
      g.fillStyle = COLORS.last;
      g.fillRect(plotW + 2, ly - 9, axis - 4, 18);
      g.fillStyle = "#0d1117";
      g.fillText(formatPrice(last.c, high - low), plotW + 6, ly + 4);
      $("chart-last").textContent = `${this.symbol} ${last.close}`;  // the exact decimal string
    },
  };

  function formatPrice(price, range) {
    const digits = Math.min(8, Math.max(0, 2 - Math.floor(Math.log10(range || 1))));
    return price.toFixed(digits);
  }

  window.addEventListener("resize", () => chart.draw());
  chart.draw();
  poll();
})();
