// tenantgate console: one vanilla JS module over the public admin API.
//
// Security: the session token is kept in sessionStorage (this tab only), never in a
// URL or localStorage, and travels only in the Authorization header (no cookies, so
// no CSRF). The page's CSP allows no inline script or style: the DOM is built with
// createElement, text is always set as textContent (never parsed as HTML), and every
// look is a class in console.css.

const SESSION_KEY = 'tenantgate.console.session';
const TIERS = ['free', 'pro', 'enterprise'];
const ACTIONS = ['read', 'create', 'update', 'delete', '*'];
const MAX_TIMER_MS = 2147483647;
const GRANULARITY = {
  minute: { label: 'Minute', span: 60 * 60e3, note: 'last 60 minutes' },
  hour: { label: 'Hour', span: 24 * 3600e3, note: 'last 24 hours' },
  day: { label: 'Day', span: 30 * 86400e3, note: 'last 30 days' },
};
const AUTO_REFRESH_MS = 10e3;
const FIELD_LABELS = {
  id: 'Tenant id',
  name: 'Name',
  tier: 'Tier',
  status: 'Status',
  'admin_user.email': 'Admin email',
  'admin_user.password': 'Admin password',
  email: 'Email',
  password: 'Password',
  role: 'Role',
  tenant_id: 'Tenant id',
  expires_at: 'Expires',
  grace_seconds: 'Grace period',
  max_requests: 'Max requests',
  window_seconds: 'Window',
  burst: 'Burst',
  period: 'Period',
  permissions: 'Permissions',
  granularity: 'Granularity',
};

const state = {
  session: null, // {kind: 'platform'|'tenant', token, tenantId?, label, expiresAt?}
  notice: null, // shown once on the sign-in page
  spec: undefined, // the admin API's OpenAPI document (null when unreadable)
  renderSeq: 0,
  refreshTimer: 0,
  expiryTimer: 0,
  granularity: 'hour',
  autoRefresh: true,
};

// ---------------------------------------------------------------- DOM helpers

// Set as properties; everything else (including `selected`, so that form.reset()
// returns to it) as attributes.
const PROPS = new Set(['value', 'checked', 'disabled', 'hidden', 'readOnly', 'required', 'multiple']);

function setAttrs(el, attrs, isSvg) {
  if (!attrs) return;
  for (const [k, v] of Object.entries(attrs)) {
    if (v === undefined || v === null || v === false) continue;
    if (k === 'text') el.textContent = String(v);
    else if (k === 'class') el.setAttribute('class', v);
    else if (k.startsWith('on') && typeof v === 'function') el.addEventListener(k.slice(2), v);
    else if (!isSvg && PROPS.has(k)) el[k] = v;
    else el.setAttribute(k, v === true ? '' : String(v));
  }
}

function append(el, kids) {
  for (const kid of kids.flat(Infinity)) {
    if (kid === null || kid === undefined || kid === false) continue;
    el.append(kid instanceof Node ? kid : document.createTextNode(String(kid)));
  }
  return el;
}

function h(tag, attrs, ...kids) {
  const el = document.createElement(tag);
  setAttrs(el, attrs, false);
  return append(el, kids);
}

/** Replaces an element's children (skipping null/false, unlike replaceChildren). */
function fill(el, ...kids) {
  el.replaceChildren();
  return append(el, kids);
}

function svg(tag, attrs, ...kids) {
  const el = document.createElementNS('http://www.w3.org/2000/svg', tag);
  setAttrs(el, attrs, true);
  return append(el, kids);
}

const enc = encodeURIComponent;

function loading(what) {
  return h('p', { class: 'loading', text: `Loading ${what}…` });
}

function field(label, input, hint) {
  return h('label', { class: 'field' },
    h('span', { class: 'label', text: label }),
    input,
    hint ? h('span', { class: 'hint', text: hint }) : null);
}

function select(name, options, value, attrs) {
  return h('select', { name, ...attrs },
    options.map((o) => {
      const [v, label] = Array.isArray(o) ? o : [o, o];
      return h('option', { value: v, selected: v === value, text: label });
    }));
}

function badge(text, cls) {
  return h('span', { class: `badge ${cls || text}`, text });
}

function emptyState(title, text, action) {
  return h('div', { class: 'empty' }, h('h3', { text: title }), text ? h('p', { text }) : null, action || null);
}

function fmtTime(iso) {
  if (!iso) return '—';
  const d = new Date(iso);
  if (Number.isNaN(d.getTime())) return iso;
  return d.toLocaleString(undefined, { dateStyle: 'medium', timeStyle: 'short' });
}

function timeCell(iso) {
  return h('td', { title: iso || '' }, fmtTime(iso));
}

function fmtNum(n) {
  if (n === null || n === undefined || Number.isNaN(n)) return '—';
  return Number(n).toLocaleString(undefined, { maximumFractionDigits: n < 10 ? 2 : n < 100 ? 1 : 0 });
}

function fmtMs(n) {
  return n === null || n === undefined ? '—' : `${fmtNum(n)} ms`;
}

function fmtBytes(n) {
  const units = ['B', 'KB', 'MB', 'GB', 'TB'];
  let v = Number(n) || 0;
  let i = 0;
  while (v >= 1024 && i < units.length - 1) { v /= 1024; i += 1; }
  return `${fmtNum(v)} ${units[i]}`;
}

function isoSeconds(d) {
  return d.toISOString().replace(/\.\d{3}Z$/, 'Z');
}

function capitalize(s) {
  return s ? s.charAt(0).toUpperCase() + s.slice(1) : s;
}

// ---------------------------------------------------------------- errors

class ApiError extends Error {
  constructor(status, body, retryAfter) {
    const e = body && typeof body.error === 'object' && body.error ? body.error : {};
    super(e.message || `HTTP ${status}`);
    this.status = status;
    this.code = e.code || '';
    this.field = e.field || null;
    this.requestId = e.request_id || '';
    this.retryAfter = retryAfter && /^\d+$/.test(retryAfter) ? Number(retryAfter) : null;
    this.handled = false;
  }
}

class NetworkError extends Error {}

// A problem found before or instead of an API error, worded for the person.
class Problem extends Error {
  constructor(message, field) {
    super(message);
    this.field = field || null;
  }
}

function fieldLabel(f) {
  if (!f) return '';
  if (FIELD_LABELS[f]) return FIELD_LABELS[f];
  const m = /^permissions\[(\d+)\]\.(action|resource)$/.exec(f);
  if (m) return `Permission ${Number(m[1]) + 1}, ${m[2]}`;
  return f;
}

function waitText(seconds) {
  if (!seconds) return 'a little while';
  if (seconds < 90) return `${seconds} seconds`;
  return `${Math.ceil(seconds / 60)} minutes`;
}

/** An error in words a person understands. */
function describe(err) {
  if (err instanceof Problem) return err.message;
  if (err instanceof NetworkError) {
    return 'Cannot reach the admin API. Check that tenantgate is running and that your network is up, then try again.';
  }
  if (!(err instanceof ApiError)) return `Something went wrong in the console: ${err && err.message}`;
  const msg = err.message;
  const rid = err.requestId ? ` (request id ${err.requestId})` : '';
  switch (err.status) {
    case 400: return `The admin API could not read the request: ${msg}.`;
    case 401: return 'Your credentials were not accepted. Sign in again.';
    case 403:
      if (err.code === 'tenant_suspended') return 'This tenant is suspended, so its admins cannot make changes. A platform admin can reactivate it.';
      return `Not allowed: ${msg}.`;
    case 404: return `Not found: ${msg}. It may have been deleted in the meantime.`;
    case 405: return 'This server does not offer that operation.';
    case 409: return `${capitalize(msg)}. Choose another one.`;
    case 413: return 'That is too large for the admin API.';
    case 422: return err.field ? `${fieldLabel(err.field)}: ${msg}.` : `Please check the form: ${msg}.`;
    case 429: return `Too many requests. Try again in ${waitText(err.retryAfter)}.`;
    case 502: case 503: case 504:
      return `The admin API is temporarily unavailable (its store may be down). Try again in a moment${rid}.`;
    default: return `Unexpected answer from the admin API (HTTP ${err.status}): ${msg}${rid}.`;
  }
}

// ---------------------------------------------------------------- API client

async function api(method, path, body, opts = {}) {
  const useSession = opts.token === undefined;
  const token = useSession ? state.session && state.session.token : opts.token;
  const headers = { Accept: 'application/json' };
  if (token) headers.Authorization = `Bearer ${token}`;
  const init = { method, headers, credentials: 'omit', cache: 'no-store', referrerPolicy: 'no-referrer' };
  if (body !== undefined) {
    headers['Content-Type'] = 'application/json';
    init.body = JSON.stringify(body);
  }
  let res;
  let text;
  try {
    res = await fetch(path, init);
    text = await res.text();
  } catch (e) {
    throw new NetworkError(e && e.message ? e.message : 'network error');
  }
  let data = null;
  if (text) {
    try { data = JSON.parse(text); } catch (e) { data = null; }
  }
  if (!res.ok) {
    const err = new ApiError(res.status, data, res.headers.get('Retry-After'));
    if (res.status === 401 && useSession && state.session) {
      err.handled = true;
      endSession('Your session has ended: the token expired or is no longer accepted. Please sign in again.');
    }
    throw err;
  }
  return data;
}

/** The OpenAPI document, fetched once (public); null when it cannot be read. */
async function spec() {
  if (state.spec === undefined) {
    try {
      const res = await fetch('/openapi.json', { credentials: 'omit', cache: 'no-store' });
      state.spec = res.ok ? await res.json() : null;
    } catch (e) {
      state.spec = null;
    }
  }
  return state.spec;
}

/**
 * Whether an error means this server has no such operation at all (an older
 * tenantgate), as opposed to "this object does not exist". The API document decides
 * when it is readable; otherwise the router's fallback message does.
 */
async function isUnavailable(err, method, template) {
  if (!(err instanceof ApiError)) return false;
  if (err.status === 405 || err.status === 501) return true;
  if (err.status !== 404) return false;
  const doc = await spec();
  if (doc && doc.paths) {
    const ops = doc.paths[template];
    return !(ops && ops[method.toLowerCase()]);
  }
  return err.message === 'no such route';
}

function notAvailable(what) {
  return h('div', { class: 'alert info', role: 'status' },
    `${what} not available on this server. Upgrade tenantgate to use this here.`);
}

// ---------------------------------------------------------------- session

function loadSession() {
  let s = null;
  try {
    s = JSON.parse(window.sessionStorage.getItem(SESSION_KEY) || 'null');
  } catch (e) {
    s = null;
  }
  if (!s || typeof s.token !== 'string' || !s.token) return null;
  if (s.expiresAt && Date.now() >= s.expiresAt) {
    window.sessionStorage.removeItem(SESSION_KEY);
    state.notice = 'Your session expired. Please sign in again.';
    return null;
  }
  return s;
}

function scheduleExpiry() {
  clearTimeout(state.expiryTimer);
  const s = state.session;
  if (!s || !s.expiresAt) return;
  const ms = Math.min(Math.max(s.expiresAt - Date.now(), 0), MAX_TIMER_MS);
  state.expiryTimer = setTimeout(() => endSession('Your session expired. Please sign in again.'), ms);
}

function startSession(s) {
  state.session = s;
  window.sessionStorage.setItem(SESSION_KEY, JSON.stringify(s));
  scheduleExpiry();
  render();
}

function endSession(message) {
  window.sessionStorage.removeItem(SESSION_KEY);
  clearTimeout(state.expiryTimer);
  state.session = null;
  state.notice = message;
  render();
}

/** The claims of a JWT (unverified: only to tell which tenant a pasted token names). */
function jwtClaims(token) {
  const parts = token.split('.');
  if (parts.length !== 3) return null;
  try {
    const b64 = parts[1].replace(/-/g, '+').replace(/_/g, '/');
    return JSON.parse(atob(b64 + '='.repeat((4 - (b64.length % 4)) % 4)));
  } catch (e) {
    return null;
  }
}

async function signInWithToken(token) {
  if (!token) throw new Problem('Enter the platform admin token.', 'token');
  try {
    await api('GET', '/v1/tenants', undefined, { token });
    startSession({ kind: 'platform', token, label: 'Platform admin' });
    return;
  } catch (err) {
    if (err instanceof ApiError && err.status === 401) {
      throw new Problem('That token was not accepted. Check the platform admin token (admin.bootstrap_token or TENANTGATE_ADMIN_TOKEN) and try again.', 'token');
    }
    const claims = jwtClaims(token);
    if (!(err instanceof ApiError && err.status === 403 && claims && claims.tenant_id)) throw err;
  }
  // A tenant admin's login token pasted here: it may see its own tenant.
  const claims = jwtClaims(token);
  await checkTenantAccess(claims.tenant_id, token);
  startSession({
    kind: 'tenant',
    token,
    tenantId: claims.tenant_id,
    userId: claims.sub || null,
    label: `Tenant admin · ${claims.tenant_id}`,
    expiresAt: typeof claims.exp === 'number' ? claims.exp * 1000 : null,
  });
}

async function checkTenantAccess(tenantId, token) {
  try {
    await api('GET', `/v1/tenants/${enc(tenantId)}`, undefined, { token });
  } catch (err) {
    if (err instanceof ApiError && err.status === 403 && err.code === 'forbidden') {
      throw new Problem('You signed in, but this user is not an admin of the tenant. Only users with the admin role can use the console.');
    }
    if (err instanceof ApiError && err.code === 'tenant_suspended') {
      throw new Problem('This tenant is suspended. Ask the platform operator to reactivate it.');
    }
    throw err;
  }
}

async function signInAsTenantAdmin(tenantId, email, password) {
  if (!tenantId) throw new Problem('Enter your tenant id.', 'tenant_id');
  if (!email) throw new Problem('Enter your email address.', 'email');
  if (!password) throw new Problem('Enter your password.', 'password');
  let tok;
  try {
    tok = await api('POST', '/v1/auth/login', { tenant_id: tenantId, email, password }, { token: null });
  } catch (err) {
    if (err instanceof ApiError && err.status === 401) throw new Problem('The tenant id, email or password is wrong.');
    if (err instanceof ApiError && err.code === 'tenant_suspended') {
      throw new Problem('This tenant is suspended. Ask the platform operator to reactivate it.');
    }
    if (err instanceof ApiError && err.status === 429) {
      throw new Problem(`Too many failed sign-ins. Wait ${waitText(err.retryAfter)} and try again.`);
    }
    throw err;
  }
  await checkTenantAccess(tenantId, tok.access_token);
  const claims = jwtClaims(tok.access_token) || {};
  startSession({
    kind: 'tenant',
    token: tok.access_token,
    tenantId: claims.tenant_id || tenantId,
    userId: claims.sub || null,
    label: `${email} · ${tenantId}`,
    expiresAt: Date.now() + Number(tok.expires_in || 0) * 1000,
  });
}

// ---------------------------------------------------------------- forms, toasts, dialogs

function clearFormErrors(form) {
  form.querySelectorAll('.field-error').forEach((e) => e.remove());
  form.querySelectorAll('.invalid').forEach((e) => {
    e.classList.remove('invalid');
    e.removeAttribute('aria-invalid');
  });
  const box = form.querySelector('.form-error');
  if (box) { box.hidden = true; box.textContent = ''; }
}

function showFormError(form, err) {
  if (err && err.handled) return;
  const name = err && err.field;
  const input = name ? form.querySelector(`[name="${CSS.escape(name)}"]`) : null;
  if (input) {
    // The message goes beside its field, and only there.
    input.classList.add('invalid');
    input.setAttribute('aria-invalid', 'true');
    const text = err instanceof ApiError ? `${capitalize(err.message)}.` : err.message;
    const holder = input.closest('.field, .perm-row') || input.parentElement;
    holder.append(h('span', { class: 'field-error', role: 'alert', text }));
    input.focus();
    return;
  }
  let box = form.querySelector('.form-error');
  if (!box) {
    box = h('div', { class: 'alert error form-error full', role: 'alert' });
    form.append(box);
  }
  box.textContent = describe(err);
  box.hidden = false;
}

function formError() {
  return h('div', { class: 'alert error form-error full', role: 'alert', hidden: true });
}

/** Handles a form's submit with `handler(FormData)`; errors land in the form. */
function onSubmit(form, handler) {
  form.addEventListener('submit', async (ev) => {
    ev.preventDefault();
    const buttons = form.querySelectorAll('button');
    clearFormErrors(form);
    buttons.forEach((b) => { b.disabled = true; });
    form.classList.add('busy');
    try {
      await handler(new FormData(form));
    } catch (err) {
      showFormError(form, err);
    } finally {
      buttons.forEach((b) => { b.disabled = false; });
      form.classList.remove('busy');
    }
  });
  return form;
}

function toast(text, kind) {
  const box = document.getElementById('toasts');
  const el = h('div', { class: `toast ${kind || ''}`, role: kind === 'error' ? 'alert' : 'status' },
    h('span', { text }),
    h('button', { type: 'button', 'aria-label': 'Dismiss', text: '×', onclick: () => el.remove() }));
  box.append(el);
  while (box.children.length > 3) box.firstElementChild.remove();
  setTimeout(() => el.remove(), kind === 'error' ? 12000 : 6000);
}

function toastError(err) {
  if (!err || err.handled) return;
  toast(describe(err), 'error');
}

/**
 * A modal question. Resolves with the form's data when confirmed, null when
 * cancelled (button, Escape).
 */
function ask({ title, body, confirm, danger, fields }) {
  return new Promise((resolve) => {
    const dlg = document.getElementById('dialog');
    let result = null;
    const form = h('form', { method: 'post', novalidate: true },
      h('h2', { id: 'dialog-title', text: title }),
      [].concat(body || []).map((b) => (typeof b === 'string' ? h('p', { text: b }) : b)),
      fields || null,
      h('div', { class: 'actions' },
        h('button', { type: 'button', class: 'btn', text: 'Cancel', onclick: () => dlg.close() }),
        h('button', { type: 'submit', class: danger ? 'btn danger' : 'btn primary', text: confirm || 'OK' })));
    form.addEventListener('submit', (ev) => {
      ev.preventDefault();
      result = new FormData(form);
      dlg.close();
    });
    fill(dlg, form);
    dlg.addEventListener('close', () => resolve(result), { once: true });
    dlg.showModal();
    const first = form.querySelector('select, input');
    if (first) first.focus();
  });
}

async function copyText(text, input) {
  try {
    await navigator.clipboard.writeText(text);
    return true;
  } catch (e) {
    input.focus();
    input.select();
    try {
      return document.execCommand('copy');
    } catch (e2) {
      return false;
    }
  }
}

// ---------------------------------------------------------------- routing

function routeParts() {
  return location.hash.replace(/^#\/?/, '').split('/').filter(Boolean).map((p) => {
    try { return decodeURIComponent(p); } catch (e) { return p; }
  });
}

function go(hash) {
  if (location.hash === hash) render();
  else location.hash = hash;
}

function alive(seq) {
  return seq === state.renderSeq;
}

function render() {
  clearInterval(state.refreshTimer);
  state.refreshTimer = 0;
  const seq = ++state.renderSeq;
  const app = document.getElementById('app');
  const dlg = document.getElementById('dialog');
  if (dlg.open) dlg.close();
  if (!state.session) {
    document.title = 'Sign in · tenantgate console';
    fill(app, signInView());
    const first = app.querySelector('input:not([hidden])');
    if (first) first.focus();
    return;
  }
  const s = state.session;
  const parts = routeParts();
  let view;
  if (s.kind === 'tenant') {
    if (parts[0] !== 'tenants' || parts[1] !== s.tenantId) {
      location.replace(`#/tenants/${enc(s.tenantId)}`);
      return;
    }
    view = tenantView(parts[1], parts[2] || 'overview', seq);
  } else if (parts[0] === 'tenants' && parts[1]) {
    view = tenantView(parts[1], parts[2] || 'overview', seq);
  } else if (parts[0] === 'audit') {
    view = platformAuditView();
  } else if (parts[0] === 'tenants') {
    view = tenantsView();
  } else {
    location.replace('#/tenants');
    return;
  }
  fill(app, topBar(parts), h('main', { class: 'main' }, view));
}

function topBar(parts) {
  const s = state.session;
  const platform = s.kind === 'platform';
  const link = (href, text, active) => h('a', { href, class: active ? 'active' : null, text });
  const nav = platform
    ? [link('#/tenants', 'Tenants', parts[0] === 'tenants'), link('#/audit', 'Audit log', parts[0] === 'audit')]
    : [link(`#/tenants/${enc(s.tenantId)}`, 'My tenant', true)];
  return h('header', { class: 'topbar' },
    h('a', { class: 'brand', href: platform ? '#/tenants' : `#/tenants/${enc(s.tenantId)}` },
      h('img', { src: '/console/favicon.svg', alt: '', width: 22, height: 22 }), 'tenantgate'),
    h('nav', { class: 'topnav', 'aria-label': 'Main' }, nav, h('a', { href: '/docs', text: 'API docs' })),
    h('div', { class: 'who' },
      badge(platform ? 'Platform admin' : 'Tenant admin', platform ? 'badge-platform' : 'badge-tenant'),
      h('span', { class: 'who-name', id: 'who', text: platform ? 'all tenants' : s.label }),
      h('button', { type: 'button', class: 'btn small', id: 'sign-out', text: 'Sign out', onclick: () => endSession('You signed out.') })));
}

// ---------------------------------------------------------------- sign-in

function signInView() {
  const notice = state.notice;
  state.notice = null;
  const tokenForm = onSubmit(h('form', { id: 'signin-token', method: 'post', autocomplete: 'off' },
    field('Platform admin token',
      h('input', { name: 'token', id: 'token', type: 'password', autocomplete: 'off', spellcheck: 'false' }),
      'The admin API bootstrap token (admin.bootstrap_token or TENANTGATE_ADMIN_TOKEN). A tenant admin’s login token works too.'),
    formError(),
    h('button', { type: 'submit', class: 'btn primary wide', text: 'Sign in' })),
  (fd) => signInWithToken(String(fd.get('token') || '').trim()));

  const loginForm = onSubmit(h('form', { id: 'signin-login', method: 'post', hidden: true },
    field('Tenant id', h('input', { name: 'tenant_id', id: 'tenant_id', autocomplete: 'organization', spellcheck: 'false' })),
    field('Email', h('input', { name: 'email', id: 'email', type: 'email', autocomplete: 'username' })),
    field('Password', h('input', { name: 'password', id: 'password', type: 'password', autocomplete: 'current-password' })),
    formError(),
    h('button', { type: 'submit', class: 'btn primary wide', text: 'Sign in' })),
  (fd) => signInAsTenantAdmin(
    String(fd.get('tenant_id') || '').trim().toLowerCase(),
    String(fd.get('email') || '').trim(),
    String(fd.get('password') || ''),
  ));

  const tabToken = h('button', { type: 'button', id: 'mode-token', 'aria-pressed': 'true', text: 'Platform token' });
  const tabLogin = h('button', { type: 'button', id: 'mode-login', 'aria-pressed': 'false', text: 'Tenant admin' });
  const pick = (login) => {
    tabToken.setAttribute('aria-pressed', String(!login));
    tabLogin.setAttribute('aria-pressed', String(login));
    tokenForm.hidden = login;
    loginForm.hidden = !login;
    const first = (login ? loginForm : tokenForm).querySelector('input');
    if (first) first.focus();
  };
  tabToken.addEventListener('click', () => pick(false));
  tabLogin.addEventListener('click', () => pick(true));

  return h('div', { class: 'signin-wrap' },
    h('div', { class: 'card signin' },
      h('div', { class: 'brand-big' },
        h('img', { src: '/console/favicon.svg', alt: '', width: 32, height: 32 }),
        h('h1', { text: 'Sign in to tenantgate' })),
      notice ? h('div', { class: 'alert warn', id: 'signin-notice', role: 'status', text: notice }) : null,
      h('div', { class: 'segmented', role: 'group', 'aria-label': 'Sign in as' }, tabToken, tabLogin),
      tokenForm,
      loginForm,
      h('p', { class: 'muted small' },
        'Your session stays in this browser tab only. The admin API reference is at ',
        h('a', { href: '/docs', text: '/docs' }), '.')));
}

// ---------------------------------------------------------------- tenants (platform)

function tenantsView() {
  const listBox = h('div', { class: 'card flush' }, loading('tenants'));
  const createCard = createTenantCard();
  createCard.hidden = true;
  const toggle = () => {
    createCard.hidden = !createCard.hidden;
    if (!createCard.hidden) createCard.querySelector('input').focus();
  };
  const filter = h('input', { type: 'search', class: 'filter', placeholder: 'Filter by id or name', 'aria-label': 'Filter tenants' });
  let tenants = [];

  const draw = () => {
    const q = filter.value.trim().toLowerCase();
    const shown = tenants.filter((t) => !q || t.id.includes(q) || t.name.toLowerCase().includes(q));
    if (!tenants.length) {
      fill(listBox, emptyState('No tenants yet — create the first one.',
        'A tenant gets the default policies (admin, developer, read_only), its tier’s rate limit and, if you like, its first admin user.',
        h('button', { type: 'button', class: 'btn primary', text: 'New tenant', onclick: toggle })));
      return;
    }
    if (!shown.length) {
      fill(listBox, emptyState('No tenant matches the filter.'));
      return;
    }
    fill(listBox, h('table', { id: 'tenants-table' },
      h('thead', {}, h('tr', {}, ['Id', 'Name', 'Tier', 'Status', 'Created', ''].map((c) => h('th', { text: c })))),
      h('tbody', {}, shown.map((t) => h('tr', { 'data-tenant-id': t.id },
        h('td', {}, h('a', { href: `#/tenants/${enc(t.id)}` }, h('code', { text: t.id }))),
        h('td', { text: t.name }),
        h('td', {}, badge(t.tier, 'tier')),
        h('td', {}, badge(t.status)),
        timeCell(t.created_at),
        h('td', {}, h('div', { class: 'row-actions' },
          h('a', { class: 'btn small', href: `#/tenants/${enc(t.id)}`, text: 'Open' }),
          statusButton(t, load))))))));
  };

  async function load() {
    try {
      tenants = await api('GET', '/v1/tenants');
      tenants.sort((a, b) => a.id.localeCompare(b.id));
      draw();
    } catch (err) {
      fill(listBox, errorState(err, load));
    }
  }
  filter.addEventListener('input', draw);
  load();
  return h('section', { class: 'page' },
    h('div', { class: 'page-head' },
      h('h1', { text: 'Tenants' }),
      h('span', { class: 'spacer' }),
      filter,
      h('button', { type: 'button', class: 'btn primary', id: 'new-tenant', text: 'New tenant', onclick: toggle })),
    createCard,
    listBox);
}

function errorState(err, retry) {
  if (err && err.handled) return h('div');
  return h('div', { class: 'alert error', role: 'alert' },
    describe(err),
    retry ? h('button', { type: 'button', class: 'btn small', text: 'Try again', onclick: retry }) : null);
}

function createTenantCard() {
  const form = onSubmit(h('form', { class: 'grid', id: 'create-tenant', method: 'post', autocomplete: 'off' },
    field('Name', h('input', { name: 'name', required: true, maxlength: 200 })),
    field('Tenant id', h('input', { name: 'id', spellcheck: 'false', placeholder: 'generated from the name' }),
      'Lowercase letters, digits and dashes, 2–63 characters.'),
    field('Tier', select('tier', TIERS, 'free')),
    h('fieldset', { class: 'full' },
      h('legend', { text: 'First admin user (optional)' }),
      h('div', { class: 'grid-inner' },
        field('Admin email', h('input', { name: 'admin_user.email', type: 'email', autocomplete: 'off' })),
        field('Admin password', h('input', { name: 'admin_user.password', type: 'password', autocomplete: 'new-password' }),
          'At least 8 characters.'))),
    formError(),
    h('div', { class: 'form-actions full' },
      h('button', { type: 'submit', class: 'btn primary', text: 'Create tenant' }))),
  async (fd) => {
    const body = { name: String(fd.get('name') || '').trim(), tier: fd.get('tier') };
    const id = String(fd.get('id') || '').trim();
    if (id) body.id = id;
    const email = String(fd.get('admin_user.email') || '').trim();
    const password = String(fd.get('admin_user.password') || '');
    if (email || password) {
      if (!email) throw new Problem('Enter the admin’s email, or leave both admin fields empty.', 'admin_user.email');
      if (!password) throw new Problem('Enter the admin’s password, or leave both admin fields empty.', 'admin_user.password');
      body.admin_user = { email, password };
    }
    const t = await api('POST', '/v1/tenants', body);
    toast(`Tenant “${t.name}” created with id ${t.id}.`);
    go(`#/tenants/${enc(t.id)}`);
  });
  return h('div', { class: 'card' }, h('h2', { text: 'New tenant' }), form);
}

function statusButton(t, after) {
  const suspended = t.status === 'suspended';
  return h('button', {
    type: 'button',
    class: suspended ? 'btn small' : 'btn small danger-outline',
    'data-action': suspended ? 'reactivate' : 'suspend',
    text: suspended ? 'Reactivate' : 'Suspend',
    onclick: async () => {
      if (!suspended) {
        const ok = await ask({
          title: `Suspend ${t.name}?`,
          body: [`Every request with ${t.id}’s API keys and tokens will be refused (403 tenant_suspended) within a second, and its admins cannot sign in.`,
            'You can reactivate it at any time.'],
          confirm: 'Suspend tenant',
          danger: true,
        });
        if (!ok) return;
      }
      try {
        await api('PATCH', `/v1/tenants/${enc(t.id)}`, { status: suspended ? 'active' : 'suspended' });
        toast(suspended ? `${t.name} is active again.` : `${t.name} is suspended.`);
        after();
      } catch (err) {
        toastError(err);
      }
    },
  });
}

// ---------------------------------------------------------------- one tenant

const TABS = [
  ['overview', 'Usage'],
  ['keys', 'API keys'],
  ['users', 'Users'],
  ['policies', 'Policies'],
  ['limits', 'Limits & quota'],
  ['audit', 'Audit log'],
];

function tenantView(id, tab, seq) {
  const platform = state.session.kind === 'platform';
  const head = h('div', { class: 'card' }, loading('the tenant'));
  const ctx = { id, platform, seq, roles: null };
  const views = {
    overview: usageTab, keys: keysTab, users: usersTab, policies: policiesTab, limits: limitsTab, audit: tenantAuditTab,
  };
  const body = views[tab] ? views[tab](ctx) : emptyState('No such page.', null, h('a', { href: `#/tenants/${enc(id)}`, text: 'Back to the tenant' }));

  async function loadHead() {
    try {
      const t = await api('GET', `/v1/tenants/${enc(id)}`);
      document.title = `${t.name} · tenantgate console`;
      fill(head, tenantHead(t, loadHead));
    } catch (err) {
      if (err instanceof ApiError && err.status === 404) {
        fill(head, h('div', {},
          h('h1', { text: 'Tenant not found' }),
          h('p', { class: 'muted', text: `There is no tenant with id “${id}”. It may have been deleted.` }),
          platform ? h('a', { href: '#/tenants', text: 'All tenants' }) : null));
      } else {
        fill(head, errorState(err, loadHead));
      }
    }
  }
  loadHead();
  return h('section', { class: 'page' },
    platform ? h('div', { class: 'crumbs' }, h('a', { href: '#/tenants', text: 'Tenants' }), ' › ', id) : null,
    head,
    h('nav', { class: 'tabs', 'aria-label': 'Tenant sections' },
      TABS.map(([key, label]) => h('a', {
        href: `#/tenants/${enc(id)}/${key}`,
        class: key === tab ? 'tab active' : 'tab',
        'aria-current': key === tab ? 'page' : null,
        'data-tab': key,
        text: label,
      }))),
    body);
}

function tenantHead(t, reload) {
  const platform = state.session.kind === 'platform';
  const rename = h('button', {
    type: 'button',
    class: 'btn small',
    text: 'Rename',
    onclick: async () => {
      const input = h('input', { name: 'name', value: t.name, required: true, maxlength: 200 });
      const fd = await ask({ title: 'Rename tenant', fields: field('Name', input), confirm: 'Save' });
      if (!fd) return;
      try {
        await api('PATCH', `/v1/tenants/${enc(t.id)}`, { name: String(fd.get('name') || '').trim() });
        toast('Tenant renamed.');
        reload();
      } catch (err) {
        toastError(err);
      }
    },
  });
  let tier = null;
  if (platform) {
    tier = select('tier', TIERS, t.tier, { 'aria-label': 'Tier', id: 'tenant-tier' });
    tier.addEventListener('change', async () => {
      try {
        await api('PATCH', `/v1/tenants/${enc(t.id)}`, { tier: tier.value });
        toast(`Tier changed to ${tier.value}.`);
        reload();
      } catch (err) {
        tier.value = t.tier;
        toastError(err);
      }
    });
  }
  return h('div', { class: 'tenant-head' },
    h('div', { class: 'title' },
      h('h1', { id: 'tenant-name', text: t.name }),
      h('div', { class: 'meta' },
        h('code', { text: t.id }), badge(t.tier, 'tier'), h('span', { id: 'tenant-status' }, badge(t.status)),
        h('span', { text: `created ${fmtTime(t.created_at)}` }))),
    h('div', { class: 'actions' },
      rename,
      tier ? h('label', { class: 'check' }, 'Tier', tier) : null,
      platform ? statusButton(t, reload) : null));
}

// ---------------------------------------------------------------- usage

function usageTab(ctx) {
  const stats = h('div', { class: 'stats', id: 'usage-stats' });
  const charts = h('div', { class: 'charts', id: 'usage-charts' }, loading('usage'));
  const note = h('span', { class: 'muted', id: 'usage-range' });
  const updated = h('span', { class: 'muted small' });
  const segs = Object.entries(GRANULARITY).map(([key, g]) => h('button', {
    type: 'button',
    'data-granularity': key,
    'aria-pressed': String(key === state.granularity),
    text: g.label,
    onclick: () => {
      state.granularity = key;
      segs.forEach((b) => b.setAttribute('aria-pressed', String(b.dataset.granularity === key)));
      load();
    },
  }));
  const auto = h('input', { type: 'checkbox', checked: state.autoRefresh, id: 'auto-refresh' });
  const armTimer = () => {
    clearInterval(state.refreshTimer);
    state.refreshTimer = state.autoRefresh && alive(ctx.seq) ? setInterval(() => load(true), AUTO_REFRESH_MS) : 0;
  };
  auto.addEventListener('change', () => {
    state.autoRefresh = auto.checked;
    armTimer();
  });

  let inFlight = false;
  async function load(background) {
    if (inFlight || !alive(ctx.seq)) return;
    inFlight = true;
    const gran = state.granularity;
    const to = new Date();
    const from = new Date(to.getTime() - GRANULARITY[gran].span);
    const q = new URLSearchParams({ granularity: gran, from: isoSeconds(from), to: isoSeconds(to) });
    note.textContent = `per ${gran}, ${GRANULARITY[gran].note}`;
    try {
      const u = await api('GET', `/v1/tenants/${enc(ctx.id)}/usage?${q}`);
      if (!alive(ctx.seq)) return;
      drawUsage(u, stats, charts);
      updated.textContent = `updated ${new Date().toLocaleTimeString()}`;
    } catch (err) {
      if (!background || !(err instanceof NetworkError)) fill(charts, errorState(err, () => load()));
      else updated.textContent = 'cannot reach the admin API; retrying…';
    } finally {
      inFlight = false;
    }
  }
  load();
  armTimer();
  return h('div', { class: 'stack' },
    h('div', { class: 'toolbar' },
      h('div', { class: 'segmented', role: 'group', 'aria-label': 'Granularity' }, segs),
      note,
      h('span', { class: 'spacer' }),
      updated,
      h('label', { class: 'check' }, auto, 'Auto-refresh'),
      h('button', { type: 'button', class: 'btn small', id: 'usage-refresh', text: 'Refresh', onclick: () => load() })),
    stats,
    charts);
}

function drawUsage(u, stats, charts) {
  const t = u.totals || {};
  const lat = t.latency_ms || null;
  const stat = (k, v, id, cls) => h('div', { class: 'stat', id }, h('div', { class: `v ${cls || ''}`, text: v }), h('div', { class: 'k', text: k }));
  fill(stats, 
    stat('Requests', fmtNum(t.requests || 0), 'stat-requests'),
    stat('Rate limited (429)', fmtNum(t.rate_limited || 0), 'stat-rate-limited'),
    stat('Denied', fmtNum(t.denied || 0), 'stat-denied'),
    stat('Upstream errors', fmtNum(t.upstream_errors || 0), 'stat-upstream-errors'),
    stat('Latency p50 / p95 / p99 (ms)', lat ? `${fmtNum(lat.p50)} / ${fmtNum(lat.p95)} / ${fmtNum(lat.p99)}` : '—', 'stat-latency', 'compact'),
    stat('Bytes in / out', `${fmtBytes(t.bytes_in)} / ${fmtBytes(t.bytes_out)}`, 'stat-bytes', 'compact'));

  const series = Array.isArray(u.series) ? u.series : [];
  const at = (p) => Date.parse(p.bucket_start);
  const count = (key) => series.map((p) => ({ t: at(p), v: Number(p[key] || 0) }));
  const latency = (key) => series.map((p) => ({ t: at(p), v: p.latency_ms ? Number(p.latency_ms[key]) : null }));
  const out = [];
  if (!t.requests) {
    out.push(h('div', { class: 'alert info', id: 'usage-empty' },
      'No traffic in this period yet. Requests through the proxy with one of this tenant’s API keys or tokens show up here within a few seconds.'));
  }
  if (u.sparse) {
    out.push(h('div', { class: 'alert info' }, 'This range is long, so only buckets with traffic are listed.'));
  }
  out.push(timeChart({
    id: 'traffic',
    title: 'Traffic',
    unit: 'requests',
    from: u.from,
    to: u.to,
    granularity: u.granularity,
    series: [
      { key: 'requests', label: 'Requests', points: count('requests') },
      { key: 'rate_limited', label: 'Rate limited (429)', points: count('rate_limited') },
      { key: 'denied', label: 'Denied', points: count('denied') },
      { key: 'upstream_errors', label: 'Upstream errors', points: count('upstream_errors') },
    ],
  }));
  out.push(timeChart({
    id: 'latency',
    title: 'Latency',
    unit: 'ms',
    from: u.from,
    to: u.to,
    granularity: u.granularity,
    series: [
      { key: 'p50', label: 'p50', points: latency('p50') },
      { key: 'p95', label: 'p95', points: latency('p95') },
      { key: 'p99', label: 'p99', points: latency('p99') },
    ],
  }));
  fill(charts, ...out);
}

/** The smallest 1, 2, 2.5 or 5 × 10^n at or above v. */
function niceCeil(v) {
  if (!(v > 0)) return 1;
  const p = 10 ** Math.floor(Math.log10(v));
  for (const m of [1, 2, 2.5, 5, 10]) if (m * p >= v) return m * p;
  return 10 * p;
}

/** The smallest 1, 2 or 5 × 10^n at or above v. */
function niceStep(v) {
  if (!(v > 0)) return 1;
  const p = 10 ** Math.floor(Math.log10(v));
  for (const m of [1, 2, 5]) if (m * p >= v) return m * p;
  return 10 * p;
}

const BUCKET_MS = { minute: 60e3, hour: 3600e3, day: 86400e3 };
// Label every k-th bucket, k from these (so labels fall on round times).
const TICK_EVERY = {
  minute: [1, 2, 5, 10, 15, 30, 60, 120, 360, 720],
  hour: [1, 2, 3, 6, 12, 24, 48, 168],
  day: [1, 2, 7, 14, 28, 91, 182, 364],
};

// Day buckets are UTC calendar days: label them as such.
function fmtTick(ms, granularity) {
  const d = new Date(ms);
  if (granularity === 'day') return d.toLocaleDateString(undefined, { month: 'short', day: 'numeric', timeZone: 'UTC' });
  return d.toLocaleTimeString(undefined, { hour: '2-digit', minute: '2-digit' });
}

function fmtBucket(ms, granularity) {
  const d = new Date(ms);
  if (granularity === 'day') return `${d.toLocaleDateString(undefined, { dateStyle: 'medium', timeZone: 'UTC' })} (UTC)`;
  return d.toLocaleString(undefined, { dateStyle: 'medium', timeStyle: 'short' });
}

/** A time-series line chart as SVG: one polyline per series, a circle per point. */
function timeChart({ id, title, unit, from, to, granularity, series }) {
  const W = 760;
  const H = 230;
  const M = { l: 56, r: 16, t: 12, b: 28 };
  const t0 = Date.parse(from);
  const t1 = Math.max(Date.parse(to), t0 + 1);
  let max = 0;
  for (const s of series) for (const p of s.points) if (p.v !== null && p.v > max) max = p.v;
  // Counts get whole-number gridlines; milliseconds may be fractional.
  const yMax = unit === 'ms' ? niceCeil(max) : 4 * Math.max(1, niceStep(max / 4));
  const x = (t) => M.l + ((t - t0) / (t1 - t0)) * (W - M.l - M.r);
  const y = (v) => H - M.b - (v / yMax) * (H - M.t - M.b);
  const r = (n) => Math.round(n * 10) / 10;

  const root = svg('svg', {
    class: 'chart',
    viewBox: `0 0 ${W} ${H}`,
    'data-chart': id,
    role: 'img',
    'aria-label': `${title} per ${granularity}, ${series.map((s) => s.label).join(', ')}`,
  });
  for (let i = 0; i <= 4; i += 1) {
    const v = (yMax * i) / 4;
    root.append(
      svg('line', { class: 'grid', x1: M.l, x2: W - M.r, y1: r(y(v)), y2: r(y(v)) }),
      svg('text', { x: M.l - 8, y: r(y(v) + 4), 'text-anchor': 'end' }, unit === 'ms' ? `${fmtNum(v)} ms` : fmtNum(v)));
  }
  // About six labels, on round bucket starts.
  const bucket = BUCKET_MS[granularity] || (t1 - t0) / 6;
  const buckets = (t1 - t0) / bucket;
  const every = (TICK_EVERY[granularity] || []).find((k) => buckets / k <= 6) || Math.ceil(buckets / 6);
  const tickStep = bucket * every;
  const ticks = [];
  for (let t = Math.ceil(t0 / tickStep) * tickStep; t <= t1; t += tickStep) ticks.push(t);
  for (const t of ticks) {
    const px = x(t);
    const anchor = px < M.l + 30 ? 'start' : px > W - M.r - 30 ? 'end' : 'middle';
    root.append(
      svg('line', { class: 'grid', x1: r(px), x2: r(px), y1: M.t, y2: H - M.b }),
      svg('text', { x: r(px), y: H - 8, 'text-anchor': anchor }, fmtTick(t, granularity)));
  }
  root.append(svg('line', { class: 'axis', x1: M.l, x2: W - M.r, y1: H - M.b, y2: H - M.b }));

  for (const s of series) {
    const g = svg('g', { class: `series s-${s.key}`, 'data-series': s.key });
    let run = [];
    const flush = () => {
      if (run.length > 1) g.append(svg('polyline', { points: run.join(' ') }));
      run = [];
    };
    const dots = [];
    for (const p of s.points) {
      if (p.v === null || Number.isNaN(p.t)) { flush(); continue; }
      const px = r(x(p.t));
      const py = r(y(p.v));
      run.push(`${px},${py}`);
      // A dot (with its value on hover) where something happened; zeros are the line.
      if (unit !== 'ms' && p.v === 0) continue;
      dots.push(svg('circle', { class: 'point', cx: px, cy: py, r: 2.5, 'data-value': p.v, 'data-t': new Date(p.t).toISOString() },
        svg('title', {}, `${fmtBucket(p.t, granularity)} — ${s.label}: ${unit === 'ms' ? fmtMs(p.v) : fmtNum(p.v)}`)));
    }
    flush();
    g.append(...dots);
    root.append(g);
  }
  return h('figure', { class: 'card chart-card', id: `chart-${id}` },
    h('figcaption', {},
      h('h3', { text: title }),
      h('div', { class: 'legend' }, series.map((s) => h('span', {}, h('span', { class: `sw s-${s.key}` }), s.label)))),
    root);
}

// ---------------------------------------------------------------- API keys

async function tenantRoles(ctx) {
  if (!ctx.roles) {
    try {
      const policies = await api('GET', `/v1/tenants/${enc(ctx.id)}/policies`);
      ctx.roles = policies.map((p) => p.role).sort();
    } catch (err) {
      ctx.roles = [];
    }
  }
  return ctx.roles;
}

function roleInput(ctx, name, current) {
  const holder = h('span', { class: 'role-holder' }, h('input', { name, value: current || '', placeholder: 'developer' }));
  tenantRoles(ctx).then((roles) => {
    if (!roles.length) return;
    const pick = current && roles.includes(current) ? current : roles.includes('developer') ? 'developer' : roles[0];
    fill(holder, select(name, roles, pick));
  });
  return holder;
}

function secretPanel(created, title, extra) {
  const input = h('input', { readonly: true, value: created.key, id: 'new-key-secret', 'aria-label': 'The new API key', spellcheck: 'false' });
  const copy = h('button', { type: 'button', class: 'btn primary', id: 'copy-key', text: 'Copy' });
  const panel = h('div', { class: 'card secret', id: 'secret-panel', role: 'alert' },
    h('h3', { text: title }),
    h('p', { class: 'warn-text', text: 'Copy this key now — you will not see it again. tenantgate keeps only a digest of it.' }),
    h('div', { class: 'secret-row' }, input, copy),
    h('p', { class: 'muted small' },
      'Send it to the proxy as ', h('code', { text: 'X-API-Key: tg_…' }), ' or ', h('code', { text: 'Authorization: Bearer tg_…' }), '.'),
    extra ? h('p', { class: 'muted small', text: extra }) : null,
    h('button', { type: 'button', class: 'btn', id: 'secret-done', text: 'I have stored it', onclick: () => panel.remove() }));
  copy.addEventListener('click', async () => {
    const ok = await copyText(created.key, input);
    copy.textContent = ok ? 'Copied' : 'Select and copy it';
    setTimeout(() => { copy.textContent = 'Copy'; }, 2500);
  });
  input.addEventListener('focus', () => input.select());
  return panel;
}

function keysTab(ctx) {
  const secretSlot = h('div');
  const list = h('div', { class: 'card flush' }, loading('API keys'));
  const form = onSubmit(h('form', { class: 'grid', id: 'create-key', method: 'post', autocomplete: 'off' },
    field('Name', h('input', { name: 'name', required: true, maxlength: 200, placeholder: 'ci-deploy' })),
    field('Role', roleInput(ctx, 'role')),
    field('Expires (optional)', h('input', { name: 'expires_at', type: 'datetime-local' }), 'Leave empty for a key that never expires.'),
    formError(),
    h('div', { class: 'form-actions full' }, h('button', { type: 'submit', class: 'btn primary', text: 'Create API key' }))),
  async (fd) => {
    const body = { name: String(fd.get('name') || '').trim(), role: String(fd.get('role') || '').trim() };
    const exp = String(fd.get('expires_at') || '');
    if (exp) {
      const d = new Date(exp);
      if (Number.isNaN(d.getTime())) throw new Problem('Enter a valid date and time.', 'expires_at');
      body.expires_at = isoSeconds(d);
    }
    const k = await api('POST', `/v1/tenants/${enc(ctx.id)}/api-keys`, body);
    form.reset();
    fill(secretSlot, secretPanel(k, `API key “${k.name}” created`));
    load();
  });

  async function revoke(k) {
    const ok = await ask({
      title: `Revoke “${k.name}”?`,
      body: [`Requests with the key tg_${k.prefix}_… are refused within a second. This cannot be undone.`],
      confirm: 'Revoke key',
      danger: true,
    });
    if (!ok) return;
    try {
      await api('DELETE', `/v1/tenants/${enc(ctx.id)}/api-keys/${enc(k.id)}`);
      toast(`Key “${k.name}” revoked.`);
      load();
    } catch (err) {
      toastError(err);
    }
  }

  async function rotate(k) {
    const fd = await ask({
      title: `Rotate “${k.name}”?`,
      body: ['A new key with the same name and role is created. Its secret is shown once.'],
      fields: field('The old key', select('grace_seconds', [
        ['0', 'stops working now'],
        ['300', 'keeps working for 5 minutes'],
        ['3600', 'keeps working for 1 hour'],
        ['86400', 'keeps working for 24 hours'],
      ], '300')),
      confirm: 'Rotate key',
    });
    if (!fd) return;
    const grace = Number(fd.get('grace_seconds'));
    try {
      const n = await api('POST', `/v1/tenants/${enc(ctx.id)}/api-keys/${enc(k.id)}/rotate`, { grace_seconds: grace });
      const extra = grace ? `The old key keeps working for ${waitText(grace)}.` : 'The old key no longer works.';
      fill(secretSlot, secretPanel(n, `Key “${n.name}” rotated: the new secret`, extra));
      load();
    } catch (err) {
      toastError(err);
    }
  }

  async function load() {
    try {
      const keys = await api('GET', `/v1/tenants/${enc(ctx.id)}/api-keys`);
      const rank = { active: 0, expired: 1, revoked: 2 };
      keys.sort((a, b) => (rank[a.status] ?? 3) - (rank[b.status] ?? 3) || String(b.created_at).localeCompare(String(a.created_at)));
      if (!keys.length) {
        fill(list, emptyState('No API keys yet — create one.', 'Programs use API keys to call your upstream through tenantgate.'));
        return;
      }
      fill(list, h('table', { id: 'keys-table' },
        h('thead', {}, h('tr', {}, ['Name', 'Key', 'Role', 'Status', 'Created', 'Expires', ''].map((c) => h('th', { text: c })))),
        h('tbody', {}, keys.map((k) => h('tr', { 'data-key-id': k.id, 'data-status': k.status, class: k.status === 'active' ? null : 'dim' },
          h('td', { text: k.name }),
          h('td', {}, h('code', { text: `tg_${k.prefix}_…` })),
          h('td', { text: k.role }),
          h('td', {}, badge(k.status)),
          timeCell(k.created_at),
          k.expires_at ? timeCell(k.expires_at) : h('td', { class: 'muted', text: 'never' }),
          h('td', {}, k.status === 'active' ? h('div', { class: 'row-actions' },
            h('button', { type: 'button', class: 'btn small', 'data-action': 'rotate', text: 'Rotate', onclick: () => rotate(k) }),
            h('button', { type: 'button', class: 'btn small danger-outline', 'data-action': 'revoke', text: 'Revoke', onclick: () => revoke(k) }))
            : null))))));
    } catch (err) {
      fill(list, errorState(err, load));
    }
  }
  load();
  return h('div', { class: 'stack' },
    secretSlot,
    h('div', { class: 'card' }, h('h2', { text: 'Create an API key' }), form),
    list);
}

// ---------------------------------------------------------------- users

function usersTab(ctx) {
  const notice = h('div');
  const list = h('div', { class: 'card flush' }, loading('users'));
  const USER = '/v1/tenants/{id}/users/{user_id}';
  const form = onSubmit(h('form', { class: 'grid', id: 'create-user', method: 'post', autocomplete: 'off' },
    field('Email', h('input', { name: 'email', type: 'email', required: true, autocomplete: 'off' })),
    field('Password', h('input', { name: 'password', type: 'password', required: true, autocomplete: 'new-password' }), 'At least 8 characters.'),
    field('Role', roleInput(ctx, 'role')),
    formError(),
    h('div', { class: 'form-actions full' }, h('button', { type: 'submit', class: 'btn primary', text: 'Create user' }))),
  async (fd) => {
    const u = await api('POST', `/v1/tenants/${enc(ctx.id)}/users`, {
      email: String(fd.get('email') || '').trim(),
      password: String(fd.get('password') || ''),
      role: String(fd.get('role') || '').trim(),
    });
    form.reset();
    toast(`User ${u.email} created with role ${u.role}.`);
    load();
  });

  let unavailable = false;
  async function change(u, method, body, done) {
    if (unavailable) {
      toast('Changing users is not available on this server.', 'error');
      return false;
    }
    try {
      await api(method, `/v1/tenants/${enc(ctx.id)}/users/${enc(u.id)}`, body);
      toast(done);
      load();
      return true;
    } catch (err) {
      if (await isUnavailable(err, method, USER)) {
        unavailable = true;
        fill(notice, notAvailable('Changing or deleting users is'));
        list.querySelectorAll('[data-user-action]').forEach((b) => { b.disabled = true; });
      } else {
        toastError(err);
      }
      return false;
    }
  }

  function row(u, roles) {
    const status = u.status || 'active';
    // Signed in as this user: locking oneself out takes another admin.
    const self = state.session.userId === u.id;
    const lock = unavailable || self;
    const roleSel = select('role', roles.includes(u.role) ? roles : [u.role, ...roles], u.role, { 'aria-label': `Role of ${u.email}`, 'data-user-action': 'role', disabled: lock, title: self ? 'This is you' : null });
    roleSel.addEventListener('change', async () => {
      const ok = await change(u, 'PATCH', { role: roleSel.value }, `${u.email} now has role ${roleSel.value}.`);
      if (!ok) roleSel.value = u.role;
    });
    const disabled = status === 'disabled';
    return h('tr', { 'data-user-id': u.id, class: disabled ? 'dim' : null },
      h('td', {}, u.email, self ? h('span', { class: 'muted', text: ' (you)' }) : null),
      h('td', {}, roleSel),
      h('td', {}, badge(status)),
      timeCell(u.created_at),
      h('td', {}, h('div', { class: 'row-actions' },
        h('button', {
          type: 'button',
          class: 'btn small',
          'data-user-action': 'status',
          disabled: lock,
          text: disabled ? 'Enable' : 'Disable',
          onclick: () => change(u, 'PATCH', { status: disabled ? 'active' : 'disabled' }, disabled ? `${u.email} is enabled.` : `${u.email} is disabled; their tokens stop working.`),
        }),
        h('button', {
          type: 'button',
          class: 'btn small danger-outline',
          'data-user-action': 'delete',
          disabled: lock,
          text: 'Delete',
          onclick: async () => {
            const ok = await ask({ title: `Delete ${u.email}?`, body: ['Their sign-in and tokens stop working. This cannot be undone.'], confirm: 'Delete user', danger: true });
            if (ok) change(u, 'DELETE', undefined, `${u.email} deleted.`);
          },
        }))));
  }

  async function load() {
    try {
      const [users, roles] = await Promise.all([api('GET', `/v1/tenants/${enc(ctx.id)}/users`), tenantRoles(ctx)]);
      if (!users.length) {
        fill(list, emptyState('No users yet — create one.', 'Users sign in with email and password; admins can use this console for their tenant.'));
        return;
      }
      users.sort((a, b) => a.email.localeCompare(b.email));
      fill(list, h('table', { id: 'users-table' },
        h('thead', {}, h('tr', {}, ['Email', 'Role', 'Status', 'Created', ''].map((c) => h('th', { text: c })))),
        h('tbody', {}, users.map((u) => row(u, roles)))));
    } catch (err) {
      fill(list, errorState(err, load));
    }
  }
  load();
  return h('div', { class: 'stack' },
    notice,
    h('div', { class: 'card' }, h('h2', { text: 'Create a user' }), form),
    list);
}

// ---------------------------------------------------------------- policies

function policiesTab(ctx) {
  const grid = h('div', { class: 'policy-grid' }, loading('policies'));
  const addForm = onSubmit(h('form', { class: 'form-actions', id: 'add-role', method: 'post', autocomplete: 'off' },
    h('input', { name: 'role', placeholder: 'new role, e.g. billing', 'aria-label': 'New role name', spellcheck: 'false' }),
    h('button', { type: 'submit', class: 'btn', text: 'Add role' }),
    formError()),
  async (fd) => {
    const role = String(fd.get('role') || '').trim();
    if (!/^[a-z0-9_-]{1,64}$/.test(role)) {
      throw new Problem('A role name uses lowercase letters, digits, “_” and “-” (at most 64).', 'role');
    }
    if (grid.querySelector(`[data-role="${CSS.escape(role)}"]`)) throw new Problem(`The role ${role} already exists.`, 'role');
    if (grid.querySelector('.empty')) fill(grid);
    grid.prepend(policyCard(ctx, { role, permissions: [{ action: 'read', resource: '*' }] }, true));
    addForm.reset();
  });

  async function load() {
    try {
      const policies = await api('GET', `/v1/tenants/${enc(ctx.id)}/policies`);
      policies.sort((a, b) => a.role.localeCompare(b.role));
      if (!policies.length) {
        fill(grid, emptyState('No policies — no role may do anything.', 'Add a role to allow requests.'));
        return;
      }
      fill(grid, ...policies.map((p) => policyCard(ctx, p, false)));
    } catch (err) {
      fill(grid, errorState(err, load));
    }
  }
  load();
  return h('div', { class: 'stack' },
    h('div', { class: 'card' },
      h('h2', { text: 'Role policies' }),
      h('p', { class: 'muted' },
        'A request is allowed when its role has a permission whose action (GET/HEAD → read, POST → create, PUT/PATCH → update, DELETE → delete) and resource match; ',
        h('code', { text: '*' }), ' matches any. Changes reach the proxies within a second.'),
      addForm),
    grid);
}

function policyCard(ctx, policy, isNew) {
  const rows = h('div', { class: 'perm-rows' });
  const renumber = () => {
    rows.querySelectorAll('.perm-row').forEach((row, i) => {
      row.querySelector('select').name = `permissions[${i}].action`;
      row.querySelector('input').name = `permissions[${i}].resource`;
    });
  };
  const addRow = (p) => {
    const row = h('div', { class: 'perm-row' },
      select('action', ACTIONS, p.action, { 'aria-label': 'Action' }),
      h('input', { name: 'resource', value: p.resource, 'aria-label': 'Resource', spellcheck: 'false' }),
      h('button', {
        type: 'button',
        class: 'btn small',
        'aria-label': 'Remove permission',
        text: 'Remove',
        onclick: () => { row.remove(); renumber(); },
      }));
    rows.append(row);
    renumber();
  };
  policy.permissions.forEach(addRow);
  const form = onSubmit(h('form', { method: 'post', 'data-role': policy.role, autocomplete: 'off' },
    rows,
    formError(),
    h('div', { class: 'form-actions' },
      h('button', { type: 'button', class: 'btn small', text: 'Add permission', onclick: () => addRow({ action: 'read', resource: '' }) }),
      h('span', { class: 'spacer' }),
      h('button', { type: 'submit', class: 'btn primary small', text: isNew ? 'Create role' : 'Save' }))),
  async () => {
    const permissions = [...rows.querySelectorAll('.perm-row')].map((row) => ({
      action: row.querySelector('select').value,
      resource: row.querySelector('input').value.trim(),
    }));
    const saved = await api('PUT', `/v1/tenants/${enc(ctx.id)}/policies/${enc(policy.role)}`, { role: policy.role, permissions });
    ctx.roles = null;
    toast(`Policy of ${saved.role} saved (${saved.permissions.length} permission${saved.permissions.length === 1 ? '' : 's'}).`);
    form.querySelector('button[type=submit]').textContent = 'Save';
    if (unsaved) unsaved.remove();
  });
  const unsaved = isNew ? badge('not saved yet', 'expired') : null;
  return h('div', { class: 'card', 'data-role': policy.role },
    h('div', { class: 'card-head' }, h('h2', { text: policy.role }), unsaved),
    form);
}

// ---------------------------------------------------------------- limits and quota

function limitsTab(ctx) {
  return h('div', { class: 'stack' }, rateLimitCard(ctx), quotaCard(ctx));
}

function describeRate(rl) {
  const perSecond = rl.max_requests / rl.window_seconds;
  const burst = rl.burst || rl.max_requests;
  return `${fmtNum(rl.max_requests)} requests per ${fmtNum(rl.window_seconds)} s — about ${fmtNum(perSecond)} per second sustained, bursts up to ${fmtNum(burst)}.`;
}

function rateLimitCard(ctx) {
  const card = h('div', { class: 'card', id: 'rate-limit' }, h('h2', { text: 'Rate limit' }), loading('the rate limit'));
  const RL = '/v1/tenants/{id}/rate-limit';
  async function load() {
    let rl;
    try {
      rl = await api('GET', `/v1/tenants/${enc(ctx.id)}/rate-limit`);
    } catch (err) {
      fill(card, h('h2', { text: 'Rate limit' }), errorState(err, load));
      return;
    }
    const summary = h('p', { id: 'rate-summary', text: describeRate(rl) });
    const form = onSubmit(h('form', { class: 'grid', method: 'post', autocomplete: 'off' },
      field('Max requests', h('input', { name: 'max_requests', type: 'number', min: 1, step: 1, value: rl.max_requests, required: true }), 'Per window.'),
      field('Window (seconds)', h('input', { name: 'window_seconds', type: 'number', min: 1, max: 86400, step: 1, value: rl.window_seconds, required: true })),
      field('Burst (optional)', h('input', { name: 'burst', type: 'number', min: 1, step: 1, value: rl.burst ?? '' }), 'Bucket size; default: max requests.'),
      formError(),
      h('div', { class: 'form-actions full' }, h('button', { type: 'submit', class: 'btn primary', text: 'Save rate limit' }))),
    async (fd) => {
      const num = (name) => {
        const raw = String(fd.get(name) || '').trim();
        if (!raw) return null;
        const n = Number(raw);
        if (!Number.isInteger(n) || n < 1) throw new Problem('Enter a whole number of at least 1.', name);
        return n;
      };
      const body = { max_requests: num('max_requests'), window_seconds: num('window_seconds') };
      if (body.max_requests === null) throw new Problem('Enter the number of requests per window.', 'max_requests');
      if (body.window_seconds === null) throw new Problem('Enter the window in seconds.', 'window_seconds');
      const burst = num('burst');
      if (burst !== null) body.burst = burst;
      const saved = await api('PUT', `/v1/tenants/${enc(ctx.id)}/rate-limit`, body);
      summary.textContent = describeRate(saved);
      toast('Rate limit saved; the proxies apply it within a second.');
    });
    let source = null;
    if (rl.source) {
      source = h('p', { class: 'muted' }, rl.source === 'plan' ? 'Following the tier’s plan.' : 'This tenant has its own limit. ',
        rl.source === 'plan' ? null : h('button', {
          type: 'button',
          class: 'btn small',
          text: 'Follow the plan again',
          onclick: async () => {
            try {
              await api('DELETE', `/v1/tenants/${enc(ctx.id)}/rate-limit`);
              toast('The tenant follows its plan’s limit again.');
              load();
            } catch (err) {
              if (await isUnavailable(err, 'DELETE', RL)) toast('Returning to the plan is not available on this server.', 'error');
              else toastError(err);
            }
          },
        }));
    }
    fill(card, h('h2', { text: 'Rate limit' }), summary, source, form);
  }
  load();
  return card;
}

function quotaCard(ctx) {
  const Q = '/v1/tenants/{id}/quota';
  const card = h('div', { class: 'card', id: 'quota' }, h('h2', { text: 'Quota' }), loading('the quota'));
  async function load() {
    let q = null;
    try {
      q = await api('GET', `/v1/tenants/${enc(ctx.id)}/quota`);
    } catch (err) {
      if (await isUnavailable(err, 'GET', Q)) {
        fill(card, h('h2', { text: 'Quota' }), notAvailable('Quotas are'));
        return;
      }
      if (!(err instanceof ApiError && err.status === 404)) {
        fill(card, h('h2', { text: 'Quota' }), errorState(err, load));
        return;
      }
    }
    const parts = [h('h2', { text: 'Quota' })];
    if (q && q.max_requests) {
      const used = Number(q.used || 0);
      parts.push(h('dl', { class: 'kv' },
        h('dt', { text: 'Limit' }), h('dd', { text: `${fmtNum(q.max_requests)} requests per ${q.period}` }),
        h('dt', { text: 'Used' }), h('dd', {}, `${fmtNum(used)} (${fmtNum(q.remaining ?? Math.max(q.max_requests - used, 0))} left)`),
        h('dt', { text: 'Resets' }), h('dd', { title: q.resets_at || '' }, fmtTime(q.resets_at))),
      h('meter', { min: 0, max: q.max_requests, value: used, low: q.max_requests * 0.8, high: q.max_requests * 0.95, optimum: 0 }));
    } else {
      parts.push(h('p', { class: 'muted', text: 'No quota set: only the rate limit applies.' }));
    }
    const form = onSubmit(h('form', { class: 'grid', method: 'post', autocomplete: 'off' },
      field('Period', select('period', [['day', 'per UTC day'], ['month', 'per UTC month']], q && q.period ? q.period : 'month')),
      field('Max requests', h('input', { name: 'max_requests', type: 'number', min: 1, step: 1, value: q && q.max_requests ? q.max_requests : '', required: true })),
      formError(),
      h('div', { class: 'form-actions full' },
        h('button', { type: 'submit', class: 'btn primary', text: 'Save quota' }),
        q && q.max_requests ? h('button', {
          type: 'button',
          class: 'btn danger-outline',
          text: 'Remove quota',
          onclick: async () => {
            try {
              await api('DELETE', `/v1/tenants/${enc(ctx.id)}/quota`);
              toast('Quota removed.');
              load();
            } catch (err) {
              toastError(err);
            }
          },
        }) : null)),
    async (fd) => {
      const max = Number(fd.get('max_requests'));
      if (!Number.isInteger(max) || max < 1) throw new Problem('Enter a whole number of at least 1.', 'max_requests');
      try {
        await api('PUT', `/v1/tenants/${enc(ctx.id)}/quota`, { period: fd.get('period'), max_requests: max });
      } catch (err) {
        if (await isUnavailable(err, 'PUT', Q)) throw new Problem('Quotas are not available on this server.');
        throw err;
      }
      toast('Quota saved.');
      load();
    });
    parts.push(form);
    fill(card, ...parts);
  }
  load();
  return card;
}

// ---------------------------------------------------------------- audit log

function auditPage(body) {
  if (Array.isArray(body)) return { items: body, next: null };
  const b = body || {};
  const items = b.items || b.entries || b.events || b.records || b.data || [];
  return { items: Array.isArray(items) ? items : [], next: b.next_cursor || b.cursor || null };
}

function auditText(v) {
  if (v === null || v === undefined) return '';
  if (typeof v === 'string') return v;
  if (typeof v === 'object' && v.kind && 'id' in v) return v.id ? `${v.kind} ${v.id}` : v.kind;
  return JSON.stringify(v);
}

/** An audit table that pages with the API's cursor. */
function auditList(path, template, params, showTenant) {
  const box = h('div', { id: 'audit' }, loading('the audit log'));
  let rows = [];
  async function load(cursor) {
    const q = new URLSearchParams(params);
    q.set('limit', '100');
    if (cursor) q.set('cursor', cursor);
    let page;
    try {
      page = auditPage(await api('GET', `${path}?${q}`));
    } catch (err) {
      if (await isUnavailable(err, 'GET', template)) fill(box, notAvailable('The audit log is'));
      else fill(box, errorState(err, () => load(cursor)));
      return;
    }
    rows = cursor ? rows.concat(page.items) : page.items;
    if (!rows.length) {
      fill(box, h('div', { class: 'card' }, emptyState('No audit entries yet.', 'Every change made through the admin API is recorded here.')));
      return;
    }
    const heads = ['When', 'Actor', ...(showTenant ? ['Tenant'] : []), 'Action', 'Target', 'Request id'];
    fill(box, h('div', { class: 'card flush' }, h('table', { id: 'audit-table' },
      h('thead', {}, h('tr', {}, heads.map((c) => h('th', { text: c })))),
      h('tbody', {}, rows.map((e) => h('tr', {},
        timeCell(e.at),
        h('td', { text: auditText(e.actor) }),
        showTenant ? h('td', { text: e.tenant_id || '—' }) : null,
        h('td', {}, h('code', { text: auditText(e.action) })),
        h('td', { text: auditText(e.target) }),
        h('td', {}, h('code', { class: 'small', text: e.request_id || '' }))))))),
    page.next ? h('div', { class: 'form-actions' }, h('button', { type: 'button', class: 'btn', text: 'Load more', onclick: () => load(page.next) })) : null);
  }
  load(null);
  return box;
}

function tenantAuditTab(ctx) {
  return auditList(`/v1/tenants/${enc(ctx.id)}/audit`, '/v1/tenants/{id}/audit', {}, false);
}

function platformAuditView() {
  document.title = 'Audit log · tenantgate console';
  const slot = h('div');
  const show = (tenant) => {
    const params = tenant ? { tenant_id: tenant } : {};
    fill(slot, auditList('/v1/audit', '/v1/audit', params, true));
  };
  const form = h('form', { class: 'form-actions', method: 'post', autocomplete: 'off' },
    h('input', { name: 'tenant_id', placeholder: 'all tenants', 'aria-label': 'Tenant id', spellcheck: 'false' }),
    h('button', { type: 'submit', class: 'btn', text: 'Filter' }));
  form.addEventListener('submit', (ev) => {
    ev.preventDefault();
    show(String(new FormData(form).get('tenant_id') || '').trim());
  });
  show('');
  return h('section', { class: 'page' },
    h('div', { class: 'page-head' }, h('h1', { text: 'Audit log' }), h('span', { class: 'spacer' }), form),
    slot);
}

// ---------------------------------------------------------------- start

function boot() {
  state.session = loadSession();
  scheduleExpiry();
  window.addEventListener('hashchange', render);
  render();
}

boot();
