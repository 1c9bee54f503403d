// The control panel: a small single-page app over the Images v2 API and the
// customer object-store API (/store/v1).  Pages are chosen by location.hash.
import { api, ApiError, seg, setCsrf } from './api.js';
import { bytes, field, h, replace, select, table } from './dom.js';

const main = document.getElementById('main');
const alertBox = document.getElementById('alert');
const statusBox = document.getElementById('status');
const app = { config: null, me: null, schema: null };

// ---- messages ------------------------------------------------------------------
function showError(err) {
  statusBox.textContent = '';
  alertBox.className = 'alert';
  alertBox.textContent = err instanceof Error ? err.message : String(err);
  alertBox.hidden = false;
}
function showOk(text) {
  statusBox.textContent = '';
  alertBox.className = 'alert ok';
  alertBox.textContent = text;
  alertBox.hidden = false;
}
function clearMessages() { alertBox.hidden = true; alertBox.textContent = ''; statusBox.textContent = ''; }
function say(text) { statusBox.textContent = text; }

// Run an action from a button: errors shown (role=alert), the page redrawn
// after (unless the action returns false: cancelled, nothing changed).
function action(fn, { redraw = true } = {}) {
  return async (ev) => {
    if (ev) ev.preventDefault();
    const btn = ev && ev.currentTarget;
    if (btn && 'disabled' in btn) btn.disabled = true;
    try {
      const done = await fn(ev);
      if (redraw && done !== false) await route({ keepMessages: true });
    } catch (err) {
      showError(err);
      if (err instanceof ApiError && err.status === 401) return signIn();
      markReady();
    } finally {
      if (btn && btn.isConnected && 'disabled' in btn) btn.disabled = false;
    }
  };
}

const can = (op) => Boolean(app.me && app.me.can[op]);
const mine = (img) => app.me && img.owner === app.me.account;

// ---- sign-in ---------------------------------------------------------------------
async function loadSession() {
  try {
    app.me = await api('GET', '/panel/api/session');
  } catch (err) {
    if (err instanceof ApiError && err.status === 401) { app.me = null; return; }
    throw err;
  }
  setCsrf(null, app.me.csrf);
  document.getElementById('account-number').textContent = app.me.account;
  document.getElementById('account-roles').textContent = app.me.roles.join(', ') || 'none';
  document.getElementById('nav').hidden = false;
  document.getElementById('account-menu').hidden = false;
}

function signIn() {
  app.me = null;
  document.getElementById('nav').hidden = true;
  document.getElementById('account-menu').hidden = true;
  const keystone = app.config.auth === 'keystone';
  const inputs = keystone
    ? [field('Username', h('input', { name: 'username', autocomplete: 'username', required: true })),
       field('Password', h('input', { name: 'password', type: 'password', autocomplete: 'current-password', required: true })),
       field('Project', h('input', { name: 'project', required: true })),
       field('Domain', h('input', { name: 'domain', value: 'Default' }))]
    : [field('Account number', h('input', { name: 'account', required: true, autocomplete: 'username' })),
       h('fieldset', {}, h('legend', {}, 'Roles'),
         app.config.roles.map((r) => h('label', { class: 'check' },
           h('input', { type: 'checkbox', name: 'role', value: r }), r)))];
  const form = h('form', { class: 'signin', on: { submit: action(async () => {
    const data = new FormData(form);
    const body = keystone
      ? Object.fromEntries(['username', 'password', 'project', 'domain'].map((k) => [k, data.get(k)]))
      : { account: data.get('account'), roles: data.getAll('role').join(',') };
    const answer = await api('POST', '/panel/api/session', { json: body, signin: true });
    setCsrf(null, answer.csrf);
    await loadSession();
    if (!location.hash || location.hash === '#/signin') {
      location.hash = '#/images';   // the hashchange draws the page
      return false;
    }
    return true;
  }) } }, inputs, h('div', { class: 'row' }, h('button', { type: 'submit' }, 'Sign in')));
  replace(main, h('h1', {}, 'Sign in'),
    keystone ? null : h('p', { class: 'notice' },
      'Header identity: this server believes the account and roles you enter, so anyone who can reach it can act as any account. ',
      'This mode is for trusted networks only; use Keystone sign-in anywhere else.'),
    form);
  form.querySelector('input').focus();
  markReady();
}

document.getElementById('sign-out').addEventListener('click', action(async () => {
  await api('DELETE', '/panel/api/session');
  document.getElementById('account-menu').open = false;
  signIn();
}, { redraw: false }));

// ---- images ------------------------------------------------------------------------
const STATUSES = ['', 'queued', 'saving', 'active', 'killed', 'deleted', 'pending_delete', 'deactivated', 'importing'];
const PAGE = 25;

function ownerText(img) {
  return mine(img) ? 'you' : `shared from ${img.owner}`;
}

async function imagesPage(view, params) {
  const q = new URLSearchParams(params);
  const filters = ['name', 'tag', 'visibility', 'member_status', 'status'];
  const query = new URLSearchParams();
  for (const k of filters) if (q.get(k)) query.set(k, q.get(k));
  const sortKey = q.get('sort_key') || 'created_at';
  const sortDir = q.get('sort_dir') || 'desc';
  query.set('sort_key', sortKey); query.set('sort_dir', sortDir); query.set('limit', String(PAGE));
  if (q.get('marker')) query.set('marker', q.get('marker'));
  const data = await api('GET', `/v2/images?${query}`);
  const form = h('form', { class: 'inline', role: 'search', on: { submit: (ev) => {
    ev.preventDefault();
    const next = new URLSearchParams();
    for (const [k, v] of new FormData(form)) if (v) next.set(k, v);
    location.hash = `#/images?${next}`;
  } } },
  field('Name', h('input', { name: 'name', value: q.get('name') || '' })),
  field('Tag', h('input', { name: 'tag', value: q.get('tag') || '' })),
  field('Visibility', select('visibility', [['', 'default'], ['public', 'public'], ['private', 'private'], ['shared', 'shared'], ['community', 'community'], ['all', 'all']], q.get('visibility') || '')),
  field('Member status', select('member_status', [['', 'accepted'], ['pending', 'pending'], ['rejected', 'rejected'], ['all', 'all']], q.get('member_status') || '')),
  field('Status', select('status', STATUSES.map((s) => [s, s || 'any']), q.get('status') || '')),
  field('Sort by', select('sort_key', [['created_at', 'created'], ['updated_at', 'updated'], ['name', 'name'], ['size', 'size'], ['status', 'status']], sortKey)),
  field('Order', select('sort_dir', [['desc', 'descending'], ['asc', 'ascending']], sortDir)),
  h('button', { type: 'submit' }, 'Apply'));
  const rows = data.images.map((img) => h('tr', {},
    h('td', {}, h('a', { href: `#/image/${img.id}` }, img.name || img.id)),
    h('td', {}, img.status), h('td', { class: 'num' }, bytes(img.size)), h('td', { class: 'num' }, bytes(img.virtual_size)),
    h('td', {}, `${img.disk_format || '—'} / ${img.container_format || '—'}`), h('td', {}, ownerText(img))));
  const nextMarker = data.next ? new URL(data.next, location.origin).searchParams.get('marker') : null;
  const page = (marker) => { const p = new URLSearchParams(q); p.delete('marker'); if (marker) p.set('marker', marker); return `#/images?${p}`; };
  replace(view, h('h1', {}, 'Images'), form,
    rows.length ? table(['Name', 'Status', 'Size', 'Virtual size', 'Disk / container format', 'Owner'], rows)
      : h('p', { class: 'muted', id: 'no-images' }, 'No images match.'),
    h('nav', { class: 'pager', 'aria-label': 'Pages of images' },
      q.get('marker') ? h('a', { href: page(null) }, 'First page') : null,
      nextMarker ? h('a', { href: page(nextMarker), rel: 'next' }, 'Next page') : null));
}

// ---- one image ---------------------------------------------------------------------
async function imagePage(view, id) {
  const img = await api('GET', `/v2/images/${seg(id)}`);
  if (!app.schema) app.schema = await api('GET', '/v2/schemas/image');
  const base = new Set(Object.keys(app.schema.properties || {}));
  const own = mine(img);
  const extra = Object.keys(img).filter((k) => !base.has(k)).sort();
  const rules = extra.length ? await api('GET', `/panel/api/property-rules?${new URLSearchParams(extra.map((n) => ['name', n]))}`) : { rules: {} };
  const editable = own && can('update_image');

  const fields = ['id', 'name', 'status', 'visibility', 'protected', 'owner', 'size', 'virtual_size', 'disk_format',
    'container_format', 'checksum', 'os_hash_algo', 'os_hash_value', 'min_disk', 'min_ram', 'created_at', 'updated_at'];
  const dl = h('dl', { class: 'fields' }, fields.map((k) => [h('dt', {}, k),
    h('dd', { class: k.includes('hash') || k === 'checksum' || k === 'id' ? 'code' : null },
      k === 'size' || k === 'virtual_size' ? `${bytes(img[k])}${img[k] != null ? ` (${img[k]} bytes)` : ''}` : String(img[k] ?? '—'))]));

  // name (editable by the owner with update rights)
  const rename = editable ? h('form', { class: 'inline', on: { submit: action(async () => {
    await api('PATCH', `/v2/images/${seg(id)}`, { json: [{ op: 'replace', path: '/name', value: rename.elements.name.value }], contentType: 'application/openstack-images-v2.1-json-patch' });
    showOk('Name saved.');
  }) } }, field('Name', h('input', { name: 'name', value: img.name || '' })), h('button', { type: 'submit' }, 'Rename')) : null;

  // properties
  const patch = (ops) => api('PATCH', `/v2/images/${seg(id)}`, { json: ops, contentType: 'application/openstack-images-v2.1-json-patch' });
  const propRows = extra.map((k) => {
    const rule = rules.rules[k] || {};
    const writable = editable && rule.update !== false;
    const value = typeof img[k] === 'string' ? img[k] : JSON.stringify(img[k]);
    if (!writable) {
      return h('tr', {}, h('th', { scope: 'row', class: 'code' }, k), h('td', { class: 'code' }, value),
        h('td', {}, rule.update === false ? h('span', { class: 'badge ro', title: rule.reason || '' }, 'read-only') : null,
          rule.update === false && rule.reason ? h('div', { class: 'muted' }, rule.reason) : null));
    }
    const input = h('input', { value, 'aria-label': `Value of ${k}` });
    return h('tr', {}, h('th', { scope: 'row', class: 'code' }, k), h('td', {}, input),
      h('td', {}, h('button', { type: 'button', on: { click: action(async () => { await patch([{ op: 'replace', path: `/${k}`, value: input.value }]); showOk(`Property ${k} saved.`); }) } }, `Save`),
        ' ', rule.delete !== false ? h('button', { type: 'button', class: 'secondary', 'aria-label': `Remove property ${k}`, on: { click: action(async () => { await patch([{ op: 'remove', path: `/${k}` }]); }) } }, 'Remove') : null));
  });
  const addProp = editable ? h('form', { class: 'inline', on: { submit: action(async (ev) => {
    const f = ev.target.elements;
    await patch([{ op: 'add', path: `/${f.key.value}`, value: f.value.value }]);
    showOk(`Property ${f.key.value} added.`);
  }) } }, field('New property', h('input', { name: 'key', required: true })), field('Value', h('input', { name: 'value' })), h('button', { type: 'submit' }, 'Add property')) : null;

  // tags
  const tagOps = own && can('add_tag');
  const tags = h('ul', { class: 'tags', 'aria-label': 'Tags' }, img.tags.map((t) => h('li', {}, h('span', { class: 'tag' }, t),
    own && can('delete_tag') ? h('button', { type: 'button', class: 'secondary', 'aria-label': `Remove tag ${t}`, on: { click: action(() => api('DELETE', `/v2/images/${seg(id)}/tags/${seg(t)}`)) } }, '×') : null)));
  const addTag = tagOps ? h('form', { class: 'inline', on: { submit: action((ev) => api('PUT', `/v2/images/${seg(id)}/tags/${seg(ev.target.elements.tag.value)}`)) } },
    field('New tag', h('input', { name: 'tag', required: true })), h('button', { type: 'submit' }, 'Add tag')) : null;

  // members
  let members = null;
  if (own) {
    if (img.visibility !== 'shared') {
      members = [h('p', { class: 'muted' }, `Only images with visibility "shared" have members; this one is ${img.visibility}.`),
        editable ? h('button', { type: 'button', on: { click: action(() => patch([{ op: 'replace', path: '/visibility', value: 'shared' }])) } }, 'Make shared') : null];
    } else {
      const list = (await api('GET', `/v2/images/${seg(id)}/members`)).members;
      members = [list.length ? table(['Member account', 'Status', ''], list.map((m) => h('tr', {}, h('td', { class: 'code' }, m.member_id), h('td', {}, m.status),
        h('td', {}, can('delete_member') ? h('button', { type: 'button', class: 'secondary', 'aria-label': `Remove member ${m.member_id}`, on: { click: action(() => api('DELETE', `/v2/images/${seg(id)}/members/${seg(m.member_id)}`)) } }, 'Remove') : null))))
        : h('p', { class: 'muted' }, 'Not shared with anyone yet.'),
      can('add_member') ? h('form', { class: 'inline', on: { submit: action(async (ev) => {
        const member = ev.target.elements.member.value.trim();
        await api('POST', `/v2/images/${seg(id)}/members`, { json: { member } });
        showOk(`Shared with ${member}. They must accept it (by this image's ID) before it appears in their list.`);
      }) } }, field('Share with account number', h('input', { name: 'member', required: true })), h('button', { type: 'submit' }, 'Share')) : null];
    }
  } else if (img.visibility === 'shared') {
    let me = null;
    try { me = await api('GET', `/v2/images/${seg(id)}/members/${seg(app.me.account)}`); } catch { me = null; }
    if (me) {
      members = [h('p', {}, `Shared with you by ${img.owner}; your status: `, h('strong', {}, me.status)),
        can('update_member') ? h('div', { class: 'row' }, memberButtons(id)) : null];
    }
  }

  // lifecycle
  const actions = [];
  if (own && can('deactivate') && img.status === 'active') actions.push(h('button', { type: 'button', class: 'secondary', on: { click: action(() => api('POST', `/v2/images/${seg(id)}/actions/deactivate`)) } }, 'Deactivate'));
  if (own && can('reactivate') && img.status === 'deactivated') actions.push(h('button', { type: 'button', class: 'secondary', on: { click: action(() => api('POST', `/v2/images/${seg(id)}/actions/reactivate`)) } }, 'Reactivate'));
  if (own && can('delete_image')) actions.push(h('button', { type: 'button', class: 'danger', on: { click: action(async () => {
    if (!window.confirm(`Delete image "${img.name || id}"? Its data is removed and cannot be recovered.`)) return false;
    await api('DELETE', `/v2/images/${seg(id)}`);
    location.hash = '#/images';
    showOk('Image deleted.');
  }, { redraw: false }) } }, 'Delete image'));
  if (img.status === 'active' && can('download_data')) actions.push(h('a', { href: `/v2/images/${seg(id)}/file`, download: `${img.name || id}.${img.container_format === 'ova' ? 'ova' : img.disk_format || 'img'}` }, 'Download image data'));
  if (own && can('create_task')) actions.push(h('a', { href: `#/export?image=${seg(id)}` }, 'Export…'));

  replace(view, h('h1', {}, img.name || img.id), dl, rename,
    actions.length ? h('div', { class: 'row', id: 'image-actions' }, actions) : null,
    h('h2', {}, 'Properties'),
    propRows.length ? table(['Property', 'Value', ''], propRows) : h('p', { class: 'muted' }, 'No extra properties.'), addProp,
    h('h2', {}, 'Tags'), img.tags.length ? tags : h('p', { class: 'muted' }, 'No tags.'), addTag,
    members ? [h('h2', {}, own ? 'Members' : 'Sharing'), members] : null);
}

function memberButtons(id) {
  const set = (status) => action(async () => {
    await api('PUT', `/v2/images/${seg(id)}/members/${seg(app.me.account)}`, { json: { status } });
    showOk(`Share ${status}.`);
  });
  return [h('button', { type: 'button', on: { click: set('accepted') } }, 'Accept'),
    h('button', { type: 'button', class: 'secondary', on: { click: set('rejected') } }, 'Reject')];
}

// ---- shared with me ----------------------------------------------------------------
async function sharedPage(view) {
  const pending = (await api('GET', '/v2/images?visibility=shared&member_status=pending&limit=100')).images;
  const form = h('form', { class: 'inline', on: { submit: action(async () => {
    const uuid = form.elements.uuid.value.trim().toLowerCase();
    await api('PUT', `/v2/images/${seg(uuid)}/members/${seg(app.me.account)}`, { json: { status: 'accepted' } });
    showOk(`Image ${uuid} accepted; it now appears in your image list.`);
  }) } }, field('Image ID (UUID)', h('input', { name: 'uuid', required: true, size: 38, autocomplete: 'off' })),
  h('button', { type: 'submit', disabled: !can('update_member') }, 'Accept share'));
  replace(view, h('h1', {}, 'Shared with me'),
    h('p', {}, 'An image shared with your account appears in your image list only after you accept it. ',
      'The owner gives you its ID; enter it here.'), form,
    h('h2', {}, 'Pending shares'),
    pending.length ? table(['Name', 'ID', 'Owner', ''], pending.map((img) => h('tr', {},
      h('td', {}, h('a', { href: `#/image/${img.id}` }, img.name || img.id)), h('td', { class: 'code' }, img.id), h('td', {}, img.owner),
      h('td', {}, can('update_member') ? memberButtons(img.id) : null))))
      : h('p', { class: 'muted' }, 'No pending shares.'));
}

// ---- tasks -------------------------------------------------------------------------
function taskFields(t) {
  return h('dl', { class: 'fields task' },
    h('dt', {}, 'Task'), h('dd', { class: 'code' }, t.id), h('dt', {}, 'Type'), h('dd', {}, t.type),
    h('dt', {}, 'Status'), h('dd', { class: 'task-status' }, t.status),
    t.stage ? [h('dt', {}, 'Stage'), h('dd', {}, `${t.stage}${t.bytes_total ? ` (${Math.round(100 * (t.bytes_done || 0) / t.bytes_total)} %)` : ''}`)] : null,
    h('dt', {}, 'Message'), h('dd', { class: 'task-message' }, t.message || '—'),
    h('dt', {}, 'Result'), h('dd', {}, t.result && t.result.image_id ? h('a', { href: `#/image/${t.result.image_id}` }, t.result.image_id) : (t.result ? JSON.stringify(t.result) : '—')),
    h('dt', {}, 'Expires'), h('dd', {}, t.expires_at || '—'));
}

async function watchTask(id, box) {
  for (;;) {
    const t = await api('GET', `/v2/tasks/${seg(id)}`);
    replace(box, taskFields(t));
    if (t.status === 'success' || t.status === 'failure') {
      if (t.status === 'failure') showError(`Task ${t.type} failed: ${t.message}`);
      else showOk(`Task ${t.type} succeeded.`);
      return t;
    }
    say(`Task ${t.status}${t.stage ? `: ${t.stage}` : ''}…`);
    await new Promise((r) => setTimeout(r, 700));
    if (!box.isConnected) return null;
  }
}

async function tasksPage(view) {
  const tasks = (await api('GET', '/v2/tasks?limit=50')).tasks;
  const full = await Promise.all(tasks.map((t) => api('GET', `/v2/tasks/${seg(t.id)}`)));
  replace(view, h('h1', {}, 'Tasks'),
    full.length ? table(['Created', 'Type', 'Status', 'Result', 'Message', 'Expires'], full.map((t) => h('tr', {},
      h('td', {}, t.created_at), h('td', {}, t.type), h('td', {}, t.status),
      h('td', {}, t.result && t.result.image_id ? h('a', { href: `#/image/${t.result.image_id}` }, t.result.image_id) : (t.result ? JSON.stringify(t.result) : '—')),
      h('td', {}, t.message || '—'), h('td', {}, t.expires_at || '—'))))
      : h('p', { class: 'muted' }, 'No tasks.'));
}

// ---- import / export ---------------------------------------------------------------
async function containerNames() {
  return (await api('GET', '/store/v1/containers')).containers.map((c) => c.name);
}

async function importPage(view) {
  const names = await containerNames();
  const objSelect = h('select', { name: 'object', required: true });
  const loadObjects = async () => {
    const c = form.elements.container.value;
    const objs = c ? (await api('GET', `/store/v1/containers/${seg(c)}/objects`)).objects : [];
    replace(objSelect, objs.filter((o) => !o.large_object).map((o) => h('option', { value: o.name }, `${o.name} (${bytes(o.size)})`)));
  };
  const box = h('div', { id: 'task-box' });
  const form = h('form', { on: { submit: action(async () => {
    const f = form.elements;
    const task = await api('POST', '/v2/tasks', { json: { type: 'import', input: {
      import_from: `${f.container.value}/${f.object.value}`, import_from_format: 'vhd',
      image_properties: { name: f.name.value } } } });
    await watchTask(task.id, box);
  }, { redraw: false }) } },
  h('div', { class: 'row' },
    field('Container', h('select', { name: 'container', required: true, on: { change: action(loadObjects, { redraw: false }) } }, names.map((n) => h('option', { value: n }, n)))),
    field('Object (a VHD)', objSelect),
    field('Image name', h('input', { name: 'name', required: true })),
    h('button', { type: 'submit', disabled: !can('create_task') }, 'Start import')));
  replace(view, h('h1', {}, 'Import an image'),
    h('p', {}, 'Imports a VHD (fixed or dynamic) from one of your containers as a new image.'),
    names.length ? form : h('p', { class: 'muted' }, 'You have no containers yet; upload a VHD to a container first.'),
    can('create_task') ? null : h('p', { class: 'notice' }, 'Your roles may not start import tasks.'), box);
  if (names.length) await loadObjects();
}

async function exportPage(view, params) {
  const q = new URLSearchParams(params);
  const own = (await api('GET', `/v2/images?owner=${seg(app.me.account)}&status=active&limit=200&sort_key=name&sort_dir=asc`)).images;
  const opt = app.config.export_options_property;
  const licensed = (img) => img && img[opt] !== undefined && String(img[opt]) !== '0';
  const why = h('p', { id: 'export-why', class: 'notice', hidden: true });
  const box = h('div', { id: 'task-box' });
  const imgSelect = h('select', { name: 'image', required: true, on: { change: () => update() } },
    own.map((img) => h('option', { value: img.id, selected: img.id === q.get('image') }, `${img.name || img.id} (${img.id})`)));
  const start = h('button', { type: 'submit', disabled: !can('create_task') }, 'Start export');
  const update = () => {
    const img = own.find((i) => i.id === imgSelect.value);
    const bad = licensed(img);
    why.hidden = !bad;
    why.textContent = bad ? `This image cannot be exported: its ${opt} is ${img[opt]}, which marks licensed software (for example Windows or a paid distribution) that may not leave the cloud. Only images whose ${opt} is 0 or absent can be exported.` : '';
    start.disabled = bad || !can('create_task');
  };
  const form = h('form', { on: { submit: action(async () => {
    const f = form.elements;
    await api('PUT', `/store/v1/containers/${seg(f.container.value)}`);   // Swift-style: created if needed
    const task = await api('POST', '/v2/tasks', { json: { type: 'export', input: { image_uuid: f.image.value, receiving_swift_container: f.container.value } } });
    await watchTask(task.id, box);
  }, { redraw: false }) } },
  h('div', { class: 'row' }, field('Image', imgSelect),
    field('Container (created if needed)', h('input', { name: 'container', required: true, list: 'container-names', value: 'exports' })),
    h('datalist', { id: 'container-names' }, (await containerNames()).map((n) => h('option', { value: n }))), start), why);
  replace(view, h('h1', {}, 'Export an image'),
    h('p', {}, 'Writes one of your active images to a container as a VHD in segments, with a manifest object and a checksum sidecar.'),
    own.length ? form : h('p', { class: 'muted' }, 'You own no active images.'), box);
  update();
}

// ---- containers --------------------------------------------------------------------
async function containersPage(view, params) {
  const q = new URLSearchParams(params);
  const names = await containerNames();
  const current = q.get('c') || names[0];
  const content = [h('h1', {}, 'Containers'),
    names.length ? h('nav', { class: 'row', 'aria-label': 'Containers' }, names.map((n) =>
      h('a', { href: `#/containers?c=${seg(n)}`, 'aria-current': n === current ? 'page' : null }, n)))
      : h('p', { class: 'muted' }, 'No containers.')];
  if (current) {
    const objs = (await api('GET', `/store/v1/containers/${seg(current)}/objects`)).objects;
    const url = (o) => `/store/v1/containers/${seg(current)}/objects/${o.name.split('/').map(seg).join('/')}`;
    const manifests = objs.filter((o) => o.large_object);
    const grouped = new Set();
    const rows = [];
    const del = (o, warning) => can('delete_object') ? h('button', { type: 'button', class: 'danger', 'aria-label': `Delete ${o.name}`, on: { click: action(async () => {
      if (!window.confirm(warning || `Delete ${o.name}? This cannot be undone.`)) return false;
      await api('DELETE', url(o));
      showOk(`Deleted ${o.name}.`);
    }) } }, 'Delete') : null;
    for (const m of manifests) {
      const prefix = m.large_object.segments_prefix;
      const segs = objs.filter((o) => o !== m && o.name.startsWith(prefix) && /^\d+$/.test(o.name.slice(prefix.length)));
      const sidecar = objs.find((o) => o.name === m.large_object.sidecar);
      segs.forEach((s) => grouped.add(s)); if (sidecar) grouped.add(sidecar); grouped.add(m);
      const result = h('div', { class: 'verify-result', role: 'status' });
      rows.push(h('tr', { class: 'manifest' },
        h('td', {}, h('strong', {}, m.name), h('div', { class: 'muted' }, `exported image: manifest of ${segs.length} segment(s)`), result),
        h('td', { class: 'num' }, bytes(m.large_object.size)),
        h('td', {}, h('div', { class: 'row' },
          h('button', { type: 'button', 'aria-label': `Verify ${m.name}`, on: { click: action(async () => {
            say(`Verifying ${m.name}…`);
            const r = await api('GET', `/store/v1/containers/${seg(current)}/verify?${new URLSearchParams({ name: m.name })}`);
            if (r.ok) { showOk(`${m.name}: all ${r.segments} segment(s) verified (${bytes(r.size)}, sha256 ${r.sha256}).`); result.textContent = 'verified'; } else {
              showError(`${m.name} is damaged: ${r.segment ? `segment ${r.segment}` : 'a segment'} — ${r.problem}`);
              result.textContent = `damaged: ${r.segment || r.problem}`;
            }
          }, { redraw: false }) } }, 'Verify'),
          h('a', { href: url(m), download: m.name.split('/').pop() }, 'Download whole image'),
          del(m, `Delete the manifest ${m.name}? Its segments stay; without the manifest they no longer form an image.`)))));
      for (const s of [...segs, sidecar].filter(Boolean)) {
        rows.push(h('tr', { class: 'segment' }, h('td', { class: 'code' }, s.name), h('td', { class: 'num' }, bytes(s.size)),
          h('td', {}, h('div', { class: 'row' }, h('a', { href: url(s), download: s.name.split('/').pop() }, 'Download'),
            del(s, `Warning: ${s.name} is part of the exported image ${m.name}. Deleting it silently corrupts that image: the object store still serves the rest without an error. Delete it anyway?`)))));
      }
    }
    for (const o of objs.filter((x) => !grouped.has(x))) {
      rows.push(h('tr', {}, h('td', { class: 'code' }, o.name), h('td', { class: 'num' }, bytes(o.size)),
        h('td', {}, h('div', { class: 'row' }, h('a', { href: url(o), download: o.name.split('/').pop() }, 'Download'), del(o)))));
    }
    content.push(h('h2', {}, current), rows.length ? table(['Object', 'Size', ''], rows) : h('p', { class: 'muted' }, 'Empty container.'));
  }
  replace(view, content);
}

// ---- router --------------------------------------------------------------------------
// Each page draws into a fresh, detached view; only the latest route shows its
// view, so a slow page that finishes after a newer one never overwrites it.
const ROUTES = [
  [/^#\/images(?:\?(.*))?$/, (m, v) => imagesPage(v, m[1] || '')],
  [/^#\/image\/([0-9a-fA-F-]{36})$/, (m, v) => imagePage(v, m[1])],
  [/^#\/shared$/, (m, v) => sharedPage(v)],
  [/^#\/import$/, (m, v) => importPage(v)],
  [/^#\/export(?:\?(.*))?$/, (m, v) => exportPage(v, m[1] || '')],
  [/^#\/containers(?:\?(.*))?$/, (m, v) => containersPage(v, m[1] || '')],
  [/^#\/tasks$/, (m, v) => tasksPage(v)],
];
let routeSeq = 0;

async function route({ keepMessages = false } = {}) {
  if (!keepMessages) clearMessages();
  if (!app.me) return signIn();
  const hash = location.hash || '#/images';
  for (const a of document.querySelectorAll('#nav a')) {
    if (hash.startsWith(a.getAttribute('href'))) a.setAttribute('aria-current', 'page'); else a.removeAttribute('aria-current');
  }
  const found = ROUTES.find(([rx]) => rx.test(hash));
  const seq = ++routeSeq;
  try {
    if (!found) { location.hash = '#/images'; return; }
    const view = h('div', { class: 'view' });
    await found[1](hash.match(found[0]), view);
    if (seq !== routeSeq) return;
    replace(main, view);
    document.body.dataset.page = hash.split(/[?/]/)[1] || 'images';
  } catch (err) {
    if (seq !== routeSeq) return;
    if (err instanceof ApiError && err.status === 401) return signIn();
    showError(err);
  }
  markReady();
}

// Marks the moment the panel has finished drawing or reporting (the browser tests wait for it).
function markReady() { document.body.dataset.ready = String(performance.now()); }

async function start() {
  try {
    app.config = await api('GET', '/panel/api/config');
    setCsrf(app.config.csrf_header);
    await loadSession();
  } catch (err) {
    showError(err);
    return;
  }
  window.addEventListener('hashchange', () => { route(); main.focus(); });
  await route();
}

start();
