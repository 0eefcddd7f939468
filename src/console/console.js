// The Portcullis console: upload, list, download, share and delete through the gateway's
// own API. No framework, no build step; served from the binary with a strict CSP.
'use strict';

const KEY_SLOT = 'portcullis.key';
const PAGE = 50;

const $ = (id) => document.getElementById(id);
let key = sessionStorage.getItem(KEY_SLOT) || '';
let me = null;
let cursor = null;

function auth(extra) {
  return Object.assign({ Authorization: 'Bearer ' + key }, extra || {});
}

// Each path segment percent-encoded: the gateway decodes the path exactly once.
function encodeKey(k) {
  return k.split('/').map(encodeURIComponent).join('/');
}

function human(bytes) {
  const units = ['B', 'KiB', 'MiB', 'GiB', 'TiB'];
  let n = bytes;
  let i = 0;
  while (n >= 1024 && i < units.length - 1) {
    n /= 1024;
    i += 1;
  }
  return (i === 0 ? String(n) : n.toFixed(1)) + ' ' + units[i];
}

function setStatus(el, text, kind) {
  el.textContent = text;
  el.className = 'status' + (kind ? ' ' + kind : '');
}

async function errorOf(resp) {
  let body = null;
  try {
    body = await resp.json();
  } catch (_) {
    body = null;
  }
  return explain(resp.status, body, resp.headers.get('Retry-After'));
}

// The gateway's answer in words a person understands, with its own message as detail.
function explain(status, body, retryAfter) {
  const msg = body && body.error && body.error.message ? body.error.message : '';
  const detail = msg ? ' (' + msg + ')' : '';
  switch (status) {
    case 400: return 'The gateway could not accept this request' + detail + '.';
    case 401: return 'The API key was not accepted. Check it and paste it again.';
    case 403: return 'Your key is not allowed to do this here' + detail + '.';
    case 404: return 'That file no longer exists.';
    case 408: return 'The upload stalled and was stopped. Try again.';
    case 411: return 'The browser did not say how large the file is. Try again.';
    case 412: return 'A file with this name already exists or changed meanwhile.';
    case 413: return 'This file is too large to upload here' + detail + '.';
    case 415: return 'This type of file is not accepted here' + detail + '.';
    case 429: return 'Too many requests right now. Wait ' + (retryAfter || 'a few') + ' seconds and try again.';
    case 502: case 503: case 504:
      return 'The storage behind the gateway is busy or unavailable. Try again shortly.';
    default: return 'The gateway answered ' + status + detail + '.';
  }
}

async function signIn(candidate) {
  key = candidate;
  const resp = await fetch('/v1/me', { headers: auth() });
  if (!resp.ok) {
    setStatus($('key-status'), await errorOf(resp), 'bad');
    showSignedIn(false);
    return;
  }
  me = await resp.json();
  sessionStorage.setItem(KEY_SLOT, key);
  $('key').value = '';
  setStatus($('key-status'), 'Key accepted.', 'ok');
  $('who').textContent = 'Signed in as ' + me.principal + ' in ' + me.bucket +
    (me.prefix ? ' (files under ' + me.prefix + ')' : '');
  $('folder').value = me.prefix;
  limitLifetimes(me.max_link_seconds);
  showSignedIn(true);
  await refresh();
}

// Share lifetimes the gateway would refuse are not offered; its longest one is.
function limitLifetimes(max) {
  const select = $('lifetime');
  if (!select.dataset.all) {
    select.dataset.all = JSON.stringify([...select.options].map((o) => [o.value, o.textContent]));
  }
  const all = JSON.parse(select.dataset.all);
  const fits = all.filter(([v]) => !max || Number(v) <= max);
  if (max && !fits.some(([v]) => Number(v) === max)) {
    fits.push([String(max), 'up to ' + (max >= 3600 ? (max / 3600).toFixed(1) + ' hours' : Math.round(max / 60) + ' minutes')]);
  }
  select.replaceChildren(...fits.map(([v, text]) => new Option(text, v)));
  select.value = fits[Math.min(1, fits.length - 1)][0];
}

function showSignedIn(on) {
  // A principal that may not upload gets no upload panel.
  $('upload-section').hidden = !on || !(me && me.allow.includes('put'));
  $('list-section').hidden = !on;
  if (!on) {
    $('who').textContent = 'Not signed in';
  }
}

function forget() {
  sessionStorage.removeItem(KEY_SLOT);
  key = '';
  me = null;
  $('key').value = '';
  $('uploads').replaceChildren();
  $('objects').tBodies[0].replaceChildren();
  $('share').hidden = true;
  showSignedIn(false);
  setStatus($('key-status'), 'The key is forgotten.', '');
}

function folder() {
  return $('folder').value;
}

// Uploads create only: an existing file is replaced after the user says so.
function upload(file, replace) {
  const objectKey = folder() + file.name;
  const li = document.createElement('li');
  const name = document.createElement('span');
  name.className = 'name';
  name.textContent = objectKey;
  const cancel = document.createElement('button');
  cancel.type = 'button';
  cancel.textContent = 'Cancel';
  cancel.setAttribute('aria-label', 'Cancel upload of ' + file.name);
  const bar = document.createElement('progress');
  bar.max = 100;
  bar.value = 0;
  bar.setAttribute('aria-label', 'Progress of ' + file.name);
  const detail = document.createElement('span');
  detail.className = 'detail';
  detail.textContent = 'Starting (' + human(file.size) + ')';
  li.append(name, cancel, bar, detail);
  li.dataset.key = objectKey;
  $('uploads').append(li);

  const xhr = new XMLHttpRequest();
  xhr.open('PUT', '/v1/objects/' + encodeKey(objectKey));
  xhr.setRequestHeader('Authorization', 'Bearer ' + key);
  if (file.type) {
    xhr.setRequestHeader('Content-Type', file.type);
  }
  if (!replace) {
    xhr.setRequestHeader('If-None-Match', '*');
  }
  const started = performance.now();
  xhr.upload.onprogress = (e) => {
    if (!e.lengthComputable) {
      return;
    }
    const pct = Math.floor((e.loaded / e.total) * 100);
    bar.value = pct;
    const secs = Math.max((performance.now() - started) / 1000, 0.001);
    detail.textContent = pct + '% · ' + human(Math.round(e.loaded / secs)) + '/s';
  };
  const finish = (text, kind) => {
    cancel.remove();
    detail.textContent = text;
    li.className = kind;
    li.dataset.state = kind;
    if (kind === 'bad') {
      // The bar shows the failure: full, and red (console.css).
      bar.value = 100;
    }
  };
  xhr.onload = () => {
    if (xhr.status === 412 && !replace) {
      li.remove();
      if (window.confirm(objectKey + ' exists. Replace it?')) {
        upload(file, true);
      } else {
        setStatus($('list-status'), objectKey + ' was kept as it was.', '');
      }
      return;
    }
    if (xhr.status >= 200 && xhr.status < 300) {
      bar.value = 100;
      const secs = Math.max((performance.now() - started) / 1000, 0.001);
      finish('Uploaded ' + human(file.size) + ' in ' + secs.toFixed(1) + ' s (' + human(Math.round(file.size / secs)) + '/s)', 'ok');
      refresh();
    } else {
      let body = null;
      try {
        body = JSON.parse(xhr.responseText);
      } catch (_) {
        body = null;
      }
      finish(explain(xhr.status, body, xhr.getResponseHeader('Retry-After')), 'bad');
    }
  };
  xhr.onerror = () => finish('The connection failed before the gateway answered. Try again.', 'bad');
  xhr.onabort = () => finish('Cancelled.', 'bad');
  cancel.addEventListener('click', () => xhr.abort());
  xhr.send(file);
}

function uploadAll(files) {
  for (const f of files) {
    upload(f);
  }
}

async function refresh(more) {
  const params = new URLSearchParams({ limit: String(PAGE) });
  if (folder()) {
    params.set('prefix', folder());
  }
  if (more && cursor) {
    params.set('cursor', cursor);
  }
  const resp = await fetch('/v1/objects?' + params.toString(), { headers: auth() });
  const status = $('list-status');
  if (!resp.ok) {
    setStatus(status, await errorOf(resp), 'bad');
    return;
  }
  const page = await resp.json();
  const tbody = $('objects').tBodies[0];
  if (!more) {
    tbody.replaceChildren();
  }
  for (const o of page.objects) {
    tbody.append(row(o));
  }
  cursor = page.next_cursor;
  $('more').hidden = !cursor;
  const n = tbody.rows.length;
  setStatus(status, n === 0 ? 'No files here yet.' : n + (cursor ? '+' : '') + ' file' + (n === 1 ? '' : 's') + '.', '');
}

function row(o) {
  const tr = document.createElement('tr');
  tr.dataset.key = o.key;
  const name = document.createElement('td');
  name.className = 'name';
  name.textContent = o.key.startsWith(folder()) ? o.key.slice(folder().length) : o.key;
  name.title = o.key;
  const size = document.createElement('td');
  size.textContent = human(o.size);
  const date = document.createElement('td');
  date.textContent = o.last_modified ? new Date(o.last_modified).toLocaleString() : '';
  const actions = document.createElement('td');
  actions.className = 'actions';
  const button = (label, what, fn) => {
    const b = document.createElement('button');
    b.type = 'button';
    b.textContent = label;
    b.dataset.action = what;
    b.setAttribute('aria-label', label + ' ' + o.key);
    b.addEventListener('click', fn);
    actions.append(b);
  };
  button('Download', 'download', () => download(o.key));
  if (me && me.links) {
    button('Copy share link', 'share', () => share(o.key));
  }
  if (me && me.allow.includes('delete')) {
    button('Delete', 'delete', () => remove(o.key));
  }
  tr.append(name, size, date, actions);
  return tr;
}

async function link(objectKey, seconds) {
  const resp = await fetch('/v1/links', {
    method: 'POST',
    headers: auth({ 'Content-Type': 'application/json' }),
    body: JSON.stringify({ key: objectKey, method: 'GET', expires_in: seconds }),
  });
  if (!resp.ok) {
    throw new Error(await errorOf(resp));
  }
  const body = await resp.json();
  return new URL(body.url, window.location.href).href;
}

function save(href, objectKey) {
  const a = document.createElement('a');
  a.href = href;
  a.download = objectKey.split('/').pop();
  document.body.append(a);
  a.click();
  a.remove();
}

async function download(objectKey) {
  const status = $('list-status');
  try {
    if (me && me.links) {
      // A short-lived link streams straight to disk; the key never leaves this page.
      save(await link(objectKey, 60), objectKey);
    } else {
      const resp = await fetch('/v1/objects/' + encodeKey(objectKey), { headers: auth() });
      if (!resp.ok) {
        throw new Error(await errorOf(resp));
      }
      const url = URL.createObjectURL(await resp.blob());
      save(url, objectKey);
      setTimeout(() => URL.revokeObjectURL(url), 60000);
    }
    setStatus(status, 'Downloading ' + objectKey + '.', 'ok');
  } catch (e) {
    setStatus(status, e.message, 'bad');
  }
}

async function share(objectKey) {
  const seconds = Number($('lifetime').value);
  const out = $('share-url');
  const status = $('share-status');
  $('share').hidden = false;
  try {
    const url = await link(objectKey, seconds);
    out.value = url;
    out.dataset.key = objectKey;
    out.focus();
    out.select();
    try {
      await navigator.clipboard.writeText(url);
      setStatus(status, 'Copied. Anyone with this link can download ' + objectKey + ' for ' + $('lifetime').selectedOptions[0].textContent + '.', 'ok');
    } catch (_) {
      setStatus(status, 'Select the link and copy it. It works for ' + $('lifetime').selectedOptions[0].textContent + '.', 'ok');
    }
  } catch (e) {
    out.value = '';
    setStatus(status, e.message, 'bad');
  }
}

async function remove(objectKey) {
  if (!window.confirm('Delete ' + objectKey + '? This cannot be undone.')) {
    return;
  }
  const resp = await fetch('/v1/objects/' + encodeKey(objectKey), { method: 'DELETE', headers: auth() });
  if (!resp.ok) {
    setStatus($('list-status'), await errorOf(resp), 'bad');
    return;
  }
  setStatus($('list-status'), 'Deleted ' + objectKey + '.', 'ok');
  await refresh();
}

function wire() {
  $('key-form').addEventListener('submit', (e) => {
    e.preventDefault();
    const candidate = $('key').value.trim();
    if (candidate) {
      signIn(candidate);
    }
  });
  $('forget-key').addEventListener('click', forget);
  $('files').addEventListener('change', (e) => {
    uploadAll(e.target.files);
    e.target.value = '';
  });
  const drop = $('drop');
  drop.addEventListener('keydown', (e) => {
    if (e.key === 'Enter' || e.key === ' ') {
      e.preventDefault();
      $('files').click();
    }
  });
  drop.addEventListener('dragover', (e) => {
    e.preventDefault();
    drop.classList.add('over');
  });
  drop.addEventListener('dragleave', () => drop.classList.remove('over'));
  drop.addEventListener('drop', (e) => {
    e.preventDefault();
    drop.classList.remove('over');
    uploadAll(e.dataTransfer.files);
  });
  $('refresh').addEventListener('click', () => refresh());
  $('more').addEventListener('click', () => refresh(true));
  $('folder').addEventListener('change', () => refresh());
  if (key) {
    signIn(key);
  }
}

wire();
