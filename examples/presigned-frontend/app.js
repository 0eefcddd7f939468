// The classic presigned-URL front end. Before Portcullis its two fetch calls went to the
// page's own backend:
//   fetch('/s3/upload-url', { method: 'POST', body: JSON.stringify({ key: file.name }) })
//   fetch('/s3/download-url?key=' + encodeURIComponent(key))
// With Portcullis they go to the gateway, with a bearer header; nothing else changes.
const $ = (id) => document.getElementById(id);
const params = new URLSearchParams(location.hash.slice(1));
$('api').value = params.get('api') || 'http://127.0.0.1:8080';
$('key').value = params.get('key') || '';

const api = () => $('api').value.replace(/\/$/, '');
const auth = () => ({ Authorization: 'Bearer ' + $('key').value });
const show = (text) => { $('status').textContent = text; };
let stored = null;

// An error answer is JSON: {"error":{"code","message","request_id"}}.
async function failed(resp) {
  const body = await resp.json().catch(() => null);
  const e = body && body.error;
  return e ? `${resp.status} ${e.code}: ${e.message}` : `${resp.status}`;
}

$('upload').addEventListener('click', async () => {
  const file = $('file').files[0];
  if (!file) return show('Choose a file first.');
  show('Asking for an upload URL...');
  const asked = await fetch(api() + '/s3/upload-url', {
    method: 'POST',
    headers: { 'Content-Type': 'application/json', ...auth() },
    body: JSON.stringify({ key: file.name, contentType: file.type }),
  });
  if (!asked.ok) return show('Refused: ' + await failed(asked));
  const { url, key } = await asked.json();
  show('Uploading to ' + url);
  const put = await fetch(url, {
    method: 'PUT',
    headers: file.type ? { 'Content-Type': file.type } : {},
    body: file,
  });
  if (!put.ok) return show('Upload failed: ' + await failed(put));
  stored = key;
  show('Uploaded as ' + key);
});

$('download').addEventListener('click', async () => {
  if (!stored) return show('Upload a file first.');
  const asked = await fetch(api() + '/s3/download-url?key=' + encodeURIComponent(stored), {
    headers: auth(),
  });
  if (!asked.ok) return show('Refused: ' + await failed(asked));
  const { url } = await asked.json();
  const got = await fetch(url);
  if (!got.ok) return show('Download failed: ' + await failed(got));
  const bytes = new Uint8Array(await got.arrayBuffer());
  const digest = new Uint8Array(await crypto.subtle.digest('SHA-256', bytes));
  const hex = Array.from(digest, (b) => b.toString(16).padStart(2, '0')).join('');
  show(`Downloaded ${bytes.length} bytes, sha256 ${hex}`);
});
