// Drives the dashboard in headless Chromium (Debian's /usr/bin/chromium through playwright-core):
//   node dashboard.mjs live  URL TOKEN SCREENSHOT   logs in with TOKEN, waits until the round counter
//                                                   advances and the loss chart has points, saves a
//                                                   full-page screenshot
//   node dashboard.mjs login URL                    without a token: the login prompt shows, the API
//                                                   answers 401, a wrong token is refused with a message
// Prints one line "ok ..." and exits 0, or prints "FAIL: ..." and exits 1.
import { chromium } from 'playwright-core';

const [mode, url, token, shot] = process.argv.slice(2);
const exe = process.env.LOOM_CHROMIUM || '/usr/bin/chromium';
const fail = (msg) => { console.log('FAIL: ' + msg); process.exitCode = 1; };

const browser = await chromium.launch({
  executablePath: exe,
  headless: true,
  args: ['--no-sandbox', '--disable-background-networking', '--disable-component-update', '--disable-sync',
         '--no-first-run', '--disable-dev-shm-usage', '--disable-gpu'],
});
let page = null;
try {
  // the server's self-signed development certificate (loopback only) is accepted in this test
  page = await browser.newPage({ viewport: { width: 1280, height: 900 }, ignoreHTTPSErrors: true });
  const errors = [];
  page.on('pageerror', (e) => errors.push(String(e)));
  await page.goto(url, { waitUntil: 'load' });
  await page.waitForSelector('#login:not([hidden])', { timeout: 15000 });
  if (mode === 'login') {
    const dashHidden = await page.$eval('#dash', (e) => e.hidden);
    const api = await page.evaluate(async () => (await fetch('/v1/dash/status')).status);
    await page.fill('#token', 'not-a-valid-token-at-all-0000000');
    await page.click('#login-button');
    await page.waitForFunction(() => document.querySelector('#login-msg').textContent.includes('401'), null, { timeout: 15000 });
    const msg = await page.$eval('#login-msg', (e) => e.textContent);
    const stillHidden = await page.$eval('#dash', (e) => e.hidden);
    if (!dashHidden || !stillHidden) fail('the dashboard showed without a valid token');
    else if (api !== 401) fail(`the API answered ${api} without a token, not 401`);
    else if (errors.length) fail('page errors: ' + errors.join('; '));
    else console.log(`ok login prompt shown, API ${api} without a token, wrong token: "${msg}"`);
  } else {
    await page.fill('#token', token);
    await page.click('#login-button');
    await page.waitForSelector('#dash:not([hidden])', { timeout: 20000 });
    const round = async () => Number(await page.$eval('#round', (e) => e.textContent));
    const first = await round();
    console.log(`logged in at round ${first}`); // the test starts the clients once it reads this
    await page.waitForFunction((r0) => Number(document.querySelector('#round').textContent) > r0, first, { timeout: 90000 });
    const later = await round();
    // two rounds of train and eval loss: four points joined by lines
    await page.waitForFunction(() => document.querySelectorAll('#chart-loss svg circle.pt').length >= 4, null, { timeout: 90000 });
    const points = await page.$$eval('#chart-loss svg circle.pt', (e) => e.length);
    const clients = await page.$$eval('#clients tbody tr', (e) => e.length);
    const stored = await page.evaluate(() => sessionStorage.getItem('loom.dash.token') !== null);
    await page.screenshot({ path: shot, fullPage: true });
    if (!(later > first)) fail(`the round counter did not advance (${first} -> ${later})`);
    else if (points < 4) fail(`the loss chart has ${points} points`);
    else if (!stored) fail('the token is not kept in sessionStorage');
    else if (errors.length) fail('page errors: ' + errors.join('; '));
    else console.log(`ok round ${first} -> ${later}, ${points} loss points, ${clients} client rows, screenshot ${shot}`);
  }
} catch (e) {
  fail(String(e && e.message ? e.message : e));
  if (mode === 'live' && shot && page) await page.screenshot({ path: shot, fullPage: true }).catch(() => {});
} finally {
  await browser.close();
}
