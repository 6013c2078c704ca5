// The gateway's web page: market list, live order book and trades (WebSocket), a candlestick chart
// (lightweight-charts), login by API key (requests signed with HMAC-SHA256 in the browser, the secret
// never leaves it), place / cancel, open orders, balances and strategies. Bundled by esbuild.
import { createChart, CandlestickSeries } from "lightweight-charts";

const $ = (id) => document.getElementById(id);
const wsBase = location.origin.replace(/^http/, "ws");
let symbol = "";
let key = "";
let secretKey = null;
let marketWs = null;
let book = { bids: new Map(), asks: new Map(), nonce: 0 };
let chart = null;
let candles = null;

async function get(path, params = {}) {
  const q = new URLSearchParams(params).toString();
  const r = await fetch(path + (q ? "?" + q : ""));
  return r.json();
}

async function signed(method, path, params = {}) {
  const p = new URLSearchParams({ ...params, timestamp: Date.now() });
  const query = p.toString();
  const mac = await crypto.subtle.sign("HMAC", secretKey, new TextEncoder().encode(query));
  const signature = [...new Uint8Array(mac)].map((b) => b.toString(16).padStart(2, "0")).join("");
  const r = await fetch(`${path}?${query}&signature=${signature}`, { method, headers: { "X-MBX-APIKEY": key } });
  const body = await r.json();
  if (!r.ok) throw new Error(body.msg || r.statusText);
  return body;
}

function renderBook() {
  const rows = (m, desc) => [...m.entries()].sort((a, b) => (desc ? b[0] - a[0] : a[0] - b[0])).slice(0, 12);
  const asks = rows(book.asks, false).reverse();
  $("asks").innerHTML = asks.map(([p, q]) => `<tr><td>${p}</td><td>${q}</td></tr>`).join("");
  $("bids").innerHTML = rows(book.bids, true).map(([p, q]) => `<tr><td>${p}</td><td>${q}</td></tr>`).join("");
}

function applyDepth(d) {
  if (d.u <= book.nonce) return;
  for (const [side, key2] of [["b", "bids"], ["a", "asks"]]) {
    for (const [p, q] of d[side]) {
      if (q === "0") book[key2].delete(p);
      else book[key2].set(p, q);
    }
  }
  book.nonce = d.u;
  renderBook();
}

function addTrade(t) {
  const row = document.createElement("tr");
  row.className = t.m ? "ask" : "bid";
  row.innerHTML = `<td>${t.p}</td><td>${t.q}</td><td>${new Date(t.T).toLocaleTimeString()}</td>`;
  const body = $("trades").tBodies[0];
  body.prepend(row);
  while (body.rows.length > 30) body.deleteRow(body.rows.length - 1);
}

function bar(k) {
  return { time: Math.floor(k[0] / 1000), open: +k[1], high: +k[2], low: +k[3], close: +k[4] };
}

async function selectMarket(s) {
  symbol = s;
  if (marketWs) marketWs.close();
  $("trades").tBodies[0].innerHTML = "";
  const lower = s.toLowerCase();
  const ws = new WebSocket(`${wsBase}/stream?streams=${lower}@depth@100ms/${lower}@trade/${lower}@kline_1m`);
  marketWs = ws;
  let lastBar = 0;
  const buffered = [];
  let ready = false;
  ws.onmessage = (ev) => {
    // A closed socket of the previous market may still deliver what it had queued: not ours.
    if (ws !== marketWs) return;
    const { stream, data } = JSON.parse(ev.data);
    if (stream.endsWith("@depth@100ms")) (ready ? applyDepth(data) : buffered.push(data));
    else if (stream.endsWith("@trade")) { addTrade(data); $("last").textContent = data.p; }
    else if (stream.includes("@kline_")) {
      const k = data.k;
      const time = Math.floor(k.t / 1000);
      if (time < lastBar) return; // the chart only updates its newest bar or adds a newer one
      lastBar = time;
      candles.update({ time, open: +k.o, high: +k.h, low: +k.l, close: +k.c });
    }
  };
  ws.onopen = async () => {
    const snap = await get("/api/v3/depth", { symbol: s, limit: 1000 });
    book = { bids: new Map(snap.bids), asks: new Map(snap.asks), nonce: snap.lastUpdateId };
    ready = true;
    buffered.forEach(applyDepth);
    renderBook();
    for (const t of await get("/api/v3/trades", { symbol: s, limit: 30 })) addTrade({ p: t.price, q: t.qty, T: t.time, m: t.isBuyerMaker });
    const bars = (await get("/api/v3/klines", { symbol: s, interval: "1m", limit: 300 })).map(bar);
    if (ws !== marketWs) return;
    candles.setData(bars);
    if (bars.length) lastBar = Math.max(lastBar, bars[bars.length - 1].time);
  };
  refreshPrivate();
}

async function refreshPrivate() {
  if (!secretKey) return;
  try {
    const [orders, account, strategies] = await Promise.all([
      signed("GET", "/api/v3/openOrders", { symbol }),
      signed("GET", "/api/v3/account"),
      signed("GET", "/api/v3/strategies").catch(() => ({ strategies: [] })),
    ]);
    $("openOrders").tBodies[0].innerHTML = orders.map((o) =>
      `<tr data-order-id="${o.orderId}"><td>${o.orderId}</td><td class="${o.side === "BUY" ? "bid" : "ask"}">${o.side}</td>` +
      `<td>${o.price}</td><td>${o.origQty}</td><td>${o.executedQty}</td>` +
      `<td><button class="cancel" data-id="${o.orderId}">Cancel</button></td></tr>`).join("");
    $("balances").tBodies[0].innerHTML = account.balances.map((b) =>
      `<tr data-asset="${b.asset}"><td>${b.asset}</td><td class="free">${b.free}</td><td>${b.locked}</td></tr>`).join("");
    $("strategies").tBodies[0].innerHTML = (strategies.strategies || []).map((s) =>
      `<tr data-strategy-id="${s.strategyId}"><td>${s.strategyId}</td><td>${s.market}</td><td>${s.state}</td>` +
      `<td>${(s.report || {}).totalProfit || ""}</td><td>${(s.report || {}).matchedPairs || 0}</td></tr>`).join("");
  } catch (e) {
    $("status").textContent = "error: " + e.message;
  }
}

async function init() {
  chart = createChart($("chart"), { layout: { background: { color: "#1b2027" }, textColor: "#9aa4b2" },
    grid: { vertLines: { color: "#262c35" }, horzLines: { color: "#262c35" } }, timeScale: { timeVisible: true } });
  candles = chart.addSeries(CandlestickSeries, {});
  const info = await get("/api/v3/exchangeInfo");
  $("market").innerHTML = info.symbols.map((s) => `<option value="${s.symbol}">${s.baseAsset}/${s.quoteAsset}</option>`).join("");
  $("market").onchange = () => selectMarket($("market").value);
  $("login").onclick = async () => {
    key = $("apiKey").value.trim();
    secretKey = await crypto.subtle.importKey("raw", new TextEncoder().encode($("apiSecret").value.trim()),
      { name: "HMAC", hash: "SHA-256" }, false, ["sign"]);
    try {
      const account = await signed("GET", "/api/v3/account");
      $("status").textContent = `user ${account.uid}`;
      refreshPrivate();
    } catch (e) {
      secretKey = null;
      $("status").textContent = "login failed: " + e.message;
    }
  };
  $("place").onclick = async () => {
    const params = { symbol, side: $("side").value, type: $("type").value };
    if (params.type === "LIMIT") Object.assign(params, { price: $("price").value, quantity: $("qty").value, timeInForce: "GTC" });
    else if (params.side === "BUY") params.quoteOrderQty = $("qty").value;
    else params.quantity = $("qty").value;
    try {
      const o = await signed("POST", "/api/v3/order", params);
      $("orderResult").textContent = `order ${o.orderId} ${o.status}`;
    } catch (e) {
      $("orderResult").textContent = "refused: " + e.message;
    }
    setTimeout(refreshPrivate, 300);
  };
  $("openOrders").onclick = async (ev) => {
    const id = ev.target.dataset && ev.target.dataset.id;
    if (!id) return;
    try { await signed("DELETE", "/api/v3/order", { symbol, orderId: id }); } catch (e) { $("orderResult").textContent = e.message; }
    setTimeout(refreshPrivate, 300);
  };
  const gridConfig = () => JSON.stringify({ lowerPrice: $("gridLower").value, upperPrice: $("gridUpper").value,
    intervals: +$("gridIntervals").value, investment: $("gridInvestment").value });
  $("gridPreview").onclick = async () => {
    try {
      const plan = await signed("POST", "/api/v3/strategy/preview", { symbol, type: "GRID", config: gridConfig() });
      $("gridPlan").textContent = `levels ${plan.levels.join(" ")}; ${plan.buyOrders || 0} buys, ` +
        `${plan.sellOrders || 0} sells, ${plan.amountPerLevel} per level, profit/grid ${plan.profitRateMin}-${plan.profitRateMax}`;
      $("gridCreate").disabled = false;
    } catch (e) {
      $("gridPlan").textContent = "refused: " + e.message;
      $("gridCreate").disabled = true;
    }
  };
  $("gridCreate").onclick = async () => {
    try {
      const made = await signed("POST", "/api/v3/strategy", { symbol, type: "GRID", config: gridConfig() });
      $("gridPlan").textContent = `strategy ${made.strategy.strategyId} created`;
    } catch (e) {
      $("gridPlan").textContent = "refused: " + e.message;
    }
    $("gridCreate").disabled = true;
    setTimeout(refreshPrivate, 300);
  };
  setInterval(refreshPrivate, 1000);
  selectMarket(info.symbols[0].symbol);
}

init();
