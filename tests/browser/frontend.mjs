// Drives the classic presigned-URL page (examples/presigned-frontend) in Debian's Chromium,
// served from another origin than the gateway, as its users would: upload, download back, and
// a refusal that must reach the page as readable JSON. Started by tests/it/console.rs; prints one
// JSON line with what the page showed.
import { createServer } from 'node:http';
import { readFileSync } from 'node:fs';
import { join } from 'node:path';
import { env, launch, stepper } from './chromium.mjs';

const gateway = env('GATEWAY_URL');
const key = env('API_KEY');
const pageDir = env('PAGE_DIR');
const file = env('UPLOAD_FILE');
const refused = env('REFUSED_FILE');
const step = stepper('frontend test');

// The page's own origin: a static server on another port.
const types = { '.html': 'text/html', '.js': 'text/javascript' };
const server = createServer((req, res) => {
  const name = req.url === '/' ? 'index.html' : req.url.slice(1).split('?')[0];
  if (!(name in { 'index.html': 1, 'app.js': 1 })) { res.writeHead(404).end(); return; }
  res.writeHead(200, { 'Content-Type': types[name.slice(name.lastIndexOf('.'))] });
  res.end(readFileSync(join(pageDir, name)));
});
await new Promise((ok) => server.listen(0, '127.0.0.1', ok));
const origin = `http://127.0.0.1:${server.address().port}`;

const context = await launch();
const result = { origin, pageErrors: [] };
try {
  const page = await context.newPage();
  page.setDefaultTimeout(20000);
  page.on('pageerror', (e) => result.pageErrors.push(e.message));
  const status = () => page.textContent('#status');
  const waitFor = async (prefix) => {
    await page.waitForFunction((p) => document.getElementById('status').textContent.startsWith(p), prefix);
    return status();
  };

  step(`open the page on ${origin}`);
  await page.goto(`${origin}/#api=${encodeURIComponent(gateway)}&key=${encodeURIComponent(key)}`);
  step('upload');
  await page.setInputFiles('#file', file);
  await page.click('#upload');
  result.uploaded = await Promise.race([waitFor('Uploaded'), waitFor('Refused'), waitFor('Upload failed')]);
  step('download it back');
  await page.click('#download');
  result.downloaded = await Promise.race([waitFor('Downloaded'), waitFor('Refused'), waitFor('Download failed')]);
  step('a refusal');
  await page.setInputFiles('#file', refused);
  await page.click('#upload');
  result.refused = await waitFor('Refused');
} finally {
  await context.close();
  server.close();
}
console.log(JSON.stringify(result));
