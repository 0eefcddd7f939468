// Drives Debian's Chromium through the console, as a person would. Started by
// tests/it/console.rs with the gateway's URL, a key and the files to use; prints one JSON line
// with what it saw, and exits non-zero on the first step that fails.
import { createHash } from 'node:crypto';
import { join } from 'node:path';
import { env, launch, stepper } from './chromium.mjs';

const url = env('GATEWAY_URL');
const key = env('CONSOLE_KEY');
const small = env('SMALL_FILE');
const big = env('BIG_FILE');
const prefix = env('PREFIX');
const downloads = env('DOWNLOAD_DIR');
const screenshot = env('SCREENSHOT');
const reader = env('READER_KEY');

const step = stepper('console test');
const expect = (cond, what) => {
  if (!cond) throw new Error(`expected: ${what}`);
};

const context = await launch({ acceptDownloads: true, viewport: { width: 1100, height: 900 } });
const result = { errors: [] };
try {
  const page = await context.newPage();
  page.setDefaultTimeout(20000);
  page.on('console', (m) => {
    if (m.type() === 'error') result.errors.push(`console: ${m.text()}`);
  });
  page.on('pageerror', (e) => result.errors.push(`page: ${e.message}`));

  step('open the page');
  const resp = await page.goto(url + '/');
  const headers = resp.headers();
  expect(resp.status() === 200, 'GET / is 200');
  expect(headers['content-security-policy'].includes("default-src 'self'"), 'a strict CSP');
  expect(headers['x-frame-options'] === 'DENY', 'X-Frame-Options: DENY');

  step('keyboard: Tab reaches the key field and its buttons');
  const reached = [];
  for (let i = 0; i < 6; i++) {
    await page.keyboard.press('Tab');
    reached.push(await page.evaluate(() => document.activeElement && document.activeElement.id));
  }
  expect(reached.includes('key') && reached.includes('use-key'), `Tab order ${reached}`);

  step('a wrong key is refused in words');
  await page.fill('#key', 'not-a-key');
  await page.press('#key', 'Enter');
  await page.waitForFunction(() => document.getElementById('key-status').textContent.includes('not accepted'));
  // The 401 above is expected; the browser logs failed fetches as console errors.
  result.errors = result.errors.filter((e) => !e.includes('401'));

  step('paste the key');
  await page.fill('#key', key);
  await page.click('#use-key');
  await page.waitForFunction(() => document.getElementById('who').textContent.startsWith('Signed in as'));
  expect(await page.evaluate(() => sessionStorage.getItem('portcullis.key')) === key, 'the key is in sessionStorage');
  expect(await page.evaluate(() => localStorage.length) === 0, 'nothing in localStorage');
  expect((await page.inputValue('#folder')) === prefix, 'the folder is the principal prefix');

  step('upload a file and watch it reach 100%');
  await page.setInputFiles('#files', small);
  const name = small.split('/').pop();
  const item = `#uploads li[data-key="${prefix}${name}"]`;
  await page.waitForSelector(`${item}[data-state="ok"]`);
  result.progress = await page.$eval(`${item} progress`, (p) => p.value);
  result.uploadText = await page.$eval(`${item} .detail`, (d) => d.textContent);
  const row = `#objects tr[data-key="${prefix}${name}"]`;
  await page.waitForSelector(row);

  step('download it');
  const [download] = await Promise.all([
    page.waitForEvent('download'),
    page.click(`${row} button[data-action="download"]`),
  ]);
  result.downloaded = join(downloads, download.suggestedFilename());
  await download.saveAs(result.downloaded);

  step('an over-limit file shows the 413 in words');
  await page.setInputFiles('#files', big);
  const bigItem = `#uploads li[data-key="${prefix}${big.split('/').pop()}"]`;
  await page.waitForSelector(`${bigItem}[data-state="bad"]`);
  result.tooLargeText = await page.$eval(`${bigItem} .detail`, (d) => d.textContent);
  // Its bar turns red: full, in the failure colour.
  result.failedBar = await page.$eval(`${bigItem} progress`, (p) => ({
    value: p.value,
    accent: getComputedStyle(p).accentColor,
    bad: getComputedStyle(document.documentElement).getPropertyValue('--bad').trim(),
  }));

  step('the same file again: asked before it is replaced');
  const asked = new Promise((ok) => page.once('dialog', async (d) => { ok(d.message()); await d.accept(); }));
  await page.setInputFiles('#files', small);
  result.replaceQuestion = await asked;
  await page.waitForSelector(`${item}[data-state="ok"]`);
  result.errors = result.errors.filter((e) => !e.includes('412'));

  step('share lifetimes stop at the gateway\'s longest');
  result.lifetimes = await page.$$eval('#lifetime option', (os) => os.map((o) => o.value));
  result.errors = result.errors.filter((e) => !e.includes('413'));

  step('copy a share link and fetch it');
  await page.selectOption('#lifetime', '60');
  await page.click(`${row} button[data-action="share"]`);
  await page.waitForFunction(() => document.getElementById('share-url').value.startsWith('http'));
  result.shareUrl = await page.inputValue('#share-url');
  const shared = await fetch(result.shareUrl);
  result.shareStatus = shared.status;
  result.shareSha256 = createHash('sha256').update(Buffer.from(await shared.arrayBuffer())).digest('hex');

  step('screenshot');
  await page.screenshot({ path: screenshot, fullPage: true });

  step('phone width: nothing overflows sideways');
  await page.setViewportSize({ width: 360, height: 740 });
  const overflow = await page.evaluate(() => document.documentElement.scrollWidth - window.innerWidth);
  expect(overflow <= 0, `no horizontal overflow at 360 px (${overflow} px)`);
  await page.screenshot({ path: screenshot.replace(/\.png$/, '-phone.png'), fullPage: true });
  await page.setViewportSize({ width: 1100, height: 900 });

  step('delete it, confirming');
  page.once('dialog', (d) => d.accept());
  await page.click(`${row} button[data-action="delete"]`);
  await page.waitForSelector(row, { state: 'detached' });

  step('forget the key');
  await page.click('#forget-key');
  expect(await page.evaluate(() => sessionStorage.length) === 0, 'sessionStorage is empty');
  expect(await page.isHidden('#upload-section'), 'the upload section is hidden again');

  step('a key that may not upload gets no upload panel');
  await page.fill('#key', reader);
  await page.click('#use-key');
  await page.waitForFunction(() => document.getElementById('who').textContent.startsWith('Signed in as'));
  result.readerUploadHidden = await page.isHidden('#upload-section');
  result.readerListVisible = await page.isVisible('#list-section');
} finally {
  await context.close();
}
process.stdout.write(JSON.stringify(result) + '\n');
