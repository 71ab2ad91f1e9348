/* The cashier's counter, on the till's API (/api/v1) with the terminal's key.
 *
 * The key is kept in localStorage (a shared till survives reloads and
 * restarts; sign-out forgets it). Every sale and visit gets its idempotency
 * key when the button is pressed; it is tried online, and on a network
 * failure kept in localStorage with that key and its time, then sent with
 * the others as one offline batch (POST /api/v1/batches, JSON Lines) when the
 * network is back. A batch whose answer was lost is sent again as it was,
 * with the same Idempotency-Key, before anything new: the API answers it as
 * the first time, and the lines' own keys make a resend count once anyway.
 * Every text shown comes from the page (#messages), in the page's language.
 */
(function () {
  'use strict';

  const $ = (id) => document.getElementById(id);
  const M = JSON.parse($('messages').textContent);
  const C = JSON.parse($('counter-config').textContent);
  const PREFIX = 'regulars.counter.';
  const RETRY_MS = 15000;
  const RECENT_MAX = 30;

  // -- text, numbers ------------------------------------------------------------

  function fill(text, vars) {
    for (const [k, v] of Object.entries(vars || {})) text = text.split('{' + k + '}').join(String(v));
    return text;
  }

  function t(name, vars) {
    return fill(Object.prototype.hasOwnProperty.call(M, name) ? M[name] : name, vars);
  }

  // A message with plural forms (the page gives one per CLDR category): the
  // form for the number n, in the page's language.
  const pluralRules = (() => {
    try { return new Intl.PluralRules(C.locale); } catch (e) { return new Intl.PluralRules('en'); }
  })();
  // `free-coffee` → `Free coffee`: catalogue, card and tier names are slugs
  // (the same words as the customer's card page, engine/web/pages/card.py _title)
  function title(name) {
    const text = String(name || '').replace(/[-_.]+/g, ' ').trim();
    return text.charAt(0).toUpperCase() + text.slice(1);
  }

  function tn(name, n, vars) {
    const forms = Object.prototype.hasOwnProperty.call(M, name) ? M[name] : {other: name};
    return fill(typeof forms === 'string' ? forms : (forms[pluralRules.select(n)] || forms.other || name), vars);
  }

  function formatter(options) {
    try { return new Intl.NumberFormat(C.locale, options); } catch (e) { return new Intl.NumberFormat(undefined, options); }
  }
  const moneyFormat = formatter({style: 'currency', currency: C.currency});
  const numberFormat = formatter({});
  const money = (amount) => moneyFormat.format(Number(amount));
  const number = (n) => numberFormat.format(n);
  function moment(iso) {
    try {
      return new Intl.DateTimeFormat(C.locale, {dateStyle: 'short', timeStyle: 'short'}).format(new Date(iso));
    } catch (e) { return iso; }
  }
  function shopDay(ymd) {
    try {
      return new Intl.DateTimeFormat(C.locale, {dateStyle: 'medium', timeZone: 'UTC'}).format(new Date(ymd + 'T00:00:00Z'));
    } catch (e) { return ymd; }
  }
  function day(iso) {
    try { return new Intl.DateTimeFormat(C.locale, {dateStyle: 'medium'}).format(new Date(iso)); } catch (e) { return iso; }
  }

  /** An amount as the API takes it ("12.50"): a comma is a decimal point too. */
  function parseMoney(raw) {
    const text = String(raw || '').replace(/[\s\u00a0]/g, '').replace(',', '.');
    if (!text) return '';
    return /^\d{1,10}(\.\d{1,4})?$/.test(text) ? text : null;
  }

  function uuid() {
    if (window.crypto && crypto.randomUUID) return crypto.randomUUID();
    // Outside a secure context (a till on plain http) there is no randomUUID.
    const b = crypto.getRandomValues(new Uint8Array(16));
    b[6] = (b[6] & 0x0f) | 0x40;
    b[8] = (b[8] & 0x3f) | 0x80;
    const h = Array.from(b, (x) => x.toString(16).padStart(2, '0')).join('');
    return `${h.slice(0, 8)}-${h.slice(8, 12)}-${h.slice(12, 16)}-${h.slice(16, 20)}-${h.slice(20)}`;
  }

  function el(tag, attrs, ...children) {
    const node = document.createElement(tag);
    for (const [k, v] of Object.entries(attrs || {})) {
      if (v === null || v === undefined || v === false) continue;
      if (k === 'class') node.className = v;
      else if (k === 'text') node.textContent = v;
      else if (k.startsWith('on')) node.addEventListener(k.slice(2), v);
      else node.setAttribute(k, v === true ? '' : v);
    }
    for (const child of children.flat()) {
      if (child !== null && child !== undefined && child !== false) {
        node.append(child instanceof Node ? child : document.createTextNode(String(child)));
      }
    }
    return node;
  }

  // -- storage --------------------------------------------------------------------

  const store = {
    get(name, fallback) {
      try {
        const raw = localStorage.getItem(PREFIX + name);
        return raw === null ? fallback : JSON.parse(raw);
      } catch (e) { return fallback; }
    },
    set(name, value) { localStorage.setItem(PREFIX + name, JSON.stringify(value)); },
    del(name) { try { localStorage.removeItem(PREFIX + name); } catch (e) { /* nothing kept */ } },
  };

  let termKey = store.get('key', null);
  let customer = null; // {data, checked, seenAt, unknown}
  let enrolKey = null; // the email or phone a look-up found nobody for
  let lastSale = null; // {key, amount}: the sale just recorded online, which can be voided
  let reachable = true;
  let flushing = null;
  let sending = false; // a batch is on its way
  const redeemKeys = {}; // a redemption whose answer was lost is retried under its first key

  // What is kept per terminal: a queue written by one till is sent with its key.
  const terminal = () => (termKey || '').slice(0, 10);
  const queueName = () => 'queue.' + terminal();
  const inflightName = () => 'inflight.' + terminal();
  const recentName = () => 'recent.' + terminal();
  // The sales this device recorded (online, or sent in a batch), newest first: any can be voided.
  const salesName = () => 'sales.' + terminal();
  const SALES_MAX = 20;
  const loadQueue = () => store.get(queueName(), []);

  // -- the API --------------------------------------------------------------------

  class Offline extends Error {}

  async function api(method, path, options) {
    const {json, body, idem, type, key} = options || {};
    const headers = {Authorization: 'Bearer ' + (key || termKey), Accept: 'application/json'};
    if (idem) headers['Idempotency-Key'] = idem;
    let payload = body;
    if (json !== undefined) {
      headers['Content-Type'] = 'application/json';
      payload = JSON.stringify(json);
    } else if (type) {
      headers['Content-Type'] = type;
    }
    let response, text;
    try {
      response = await fetch(C.api + path, {method, headers, body: payload, cache: 'no-store', credentials: 'omit'});
      text = await response.text(); // a connection cut mid-answer rejects here: the answer is lost
    } catch (e) {
      setReachable(false);
      throw new Offline(String(e && e.message || e));
    }
    setReachable(true);
    let data = null;
    try { data = text ? JSON.parse(text) : null; } catch (e) { data = null; }
    return {status: response.status, data};
  }

  // Why the server refused, in the page's language where it names the case
  // (a redemption's ``reason``, with its numbers), else the server's words.
  function reason(answer) {
    const e = answer && answer.data && answer.data.error;
    if (e && e.reason && Object.prototype.hasOwnProperty.call(M, 'refusal_' + e.reason)) {
      const values = {};
      for (const [k, v] of Object.entries(e.values || {})) values[k] = number(v);
      const count = e.values && (e.values.cost !== undefined ? e.values.cost : e.values.max);
      return tn('refusal_' + e.reason, count === undefined ? 1 : count, values);
    }
    return e && e.message ? e.message : t('server_error', {status: answer ? answer.status : '?'});
  }

  const online = () => navigator.onLine !== false;

  function setReachable(value) {
    reachable = value;
    renderNet();
  }

  function renderNet() {
    const on = online() && reachable;
    $('net').classList.toggle('off', !on);
    $('net-text').textContent = on ? t('online') : t('offline');
  }

  // -- signing in ---------------------------------------------------------------------

  function signinMessage(text, kind) {
    const node = $('signin-error');
    node.textContent = text || '';
    node.hidden = !text;
    node.className = kind || 'error';
  }

  function showSignin(message) {
    $('till').hidden = true;
    $('signin').hidden = false;
    signinMessage(message);
    $('signin-key').focus();
  }

  function showTill() {
    $('signin').hidden = true;
    $('till').hidden = false;
    $('till-name').textContent = t('till', {prefix: terminal()});
    renderNet();
    renderQueue();
    renderSales();
    $('find-key').focus();
  }

  async function signIn(event) {
    event.preventDefault();
    const candidate = $('signin-key').value.trim();
    if (!candidate) return showSignin(t('no_key'));
    if (!/^[\x21-\x7e]+$/.test(candidate)) return showSignin(t('wrong_key')); // no header could carry it
    const button = $('signin-button');
    button.disabled = true;
    signinMessage(t('checking_key'), 'muted');
    try {
      // The API checks the key before anything else: a look-up without a key
      // is 400 for a good key and 401 for a wrong one, and touches nothing.
      const answer = await api('GET', '/customers', {key: candidate});
      if (answer.status === 401) return showSignin(t('wrong_key'));
      if (answer.status !== 400 && answer.status !== 200) return showSignin(reason(answer));
    } catch (e) {
      if (!(e instanceof Offline)) throw e;
      return showSignin(t('key_unreachable'));
    } finally {
      button.disabled = false;
    }
    termKey = candidate;
    store.set('key', candidate);
    $('signin-key').value = '';
    showTill();
    flush();
  }

  function signOut() {
    const waiting = loadQueue().length;
    if (waiting && !window.confirm(tn('signout_confirm', waiting, {n: waiting}))) return;
    store.del('key');
    store.del(recentName()); // the customers seen here stay with the till's session
    store.del(salesName()); // and so do the sales recorded here, with their names
    termKey = null;
    clearCustomer();
    showResult(null);
    showSignin(null);
  }

  function revoked(message) {
    store.del('key');
    store.del(recentName());
    store.del(salesName());
    termKey = null;
    clearCustomer();
    showResult(null);
    showSignin(message === undefined ? t('key_revoked') : message);
  }

  // -- finding the customer ----------------------------------------------------------

  function findMessage(text, kind) {
    const node = $('find-message');
    node.hidden = !text;
    node.textContent = text || '';
    node.className = 'message ' + (kind || 'muted');
  }

  function remember(data) {
    const recent = store.get(recentName(), []).filter((r) => r.data.card_code !== data.card_code);
    recent.unshift({at: new Date().toISOString(), data});
    try { store.set(recentName(), recent.slice(0, RECENT_MAX)); } catch (e) { /* a cache only */ }
  }

  function recall(query) {
    const q = query.trim().toLowerCase();
    const digits = q.replace(/\D/g, '');
    return store.get(recentName(), []).find(({data}) => {
      if (data.card_code && data.card_code.toLowerCase() === q.replace(/[\s-]/g, '')) return true;
      if (data.email && data.email.toLowerCase() === q) return true;
      if (data.phone && digits.length >= 6) {
        const held = data.phone.replace(/\D/g, '');
        return held.endsWith(digits) || digits.endsWith(held);
      }
      return false;
    }) || null;
  }

  const cardCode = (query) => query.toUpperCase().replace(/[\s-]/g, '');
  const looksLikeCardCode = (query) => /^[0-9A-Z]{4,64}$/.test(cardCode(query)) && !/^\d+$/.test(cardCode(query));

  const looksLikeEmail = (query) => /^[^\s@]+@[^\s@]+\.[^\s@]+$/.test(query);
  const looksLikePhone = (query) => /^\+?[\d\s()./-]{6,}$/.test(query);

  /** Offer to enrol whom a look-up did not find (an email or a phone only). */
  function offerEnrol(query) {
    enrolKey = query && (looksLikeEmail(query) || looksLikePhone(query)) ? query : null;
    $('enrol').hidden = !enrolKey;
    $('enrol-birthday').value = '';
    $('enrol-birthday').max = new Date().toISOString().slice(0, 10);
    $('enrol-button').textContent = enrolKey ? t('enrol', {key: enrolKey}) : '';
  }

  async function enrol() {
    if (!enrolKey) return;
    if (!online()) return findMessage(t('enrol_offline'), 'error');
    const key = uuid();
    const json = looksLikeEmail(enrolKey) ? {email: enrolKey} : {phone: enrolKey};
    const birthday = $('enrol-birthday').value;  // (the birthday bonus counts it; the engine keeps the first)
    if (birthday) json.birthday = birthday;
    const enrolled = await postCustomer(json, key, $('enrol-button'), findMessage, t('enrol_offline'));
    if (enrolled) {
      offerEnrol(null);
      findMessage(null);
      $('find-key').value = '';
      showResult(t('enrolled', {code: enrolled.card_code}), 'ok');
    }
  }

  /** POST /customers (a new customer, or what a known one told us), the
   * button held meanwhile: the customer the answer gives is shown and
   * returned; a refusal or a lost connection is said with ``say``. */
  async function postCustomer(json, idem, button, say, offlineText) {
    button.disabled = true;
    try {
      const answer = await api('POST', '/customers', {json, idem});
      if ((answer.status === 200 || answer.status === 201) && answer.data && answer.data.customer) {
        remember(answer.data.customer);
        showCustomer(answer.data.customer, {checked: true});
        return answer.data.customer;
      }
      if (answer.status === 401) revoked();
      else say(reason(answer), 'error');
    } catch (e) {
      if (!(e instanceof Offline)) throw e;
      say(offlineText, 'error');
    } finally {
      button.disabled = false;
    }
    return null;
  }

  async function find(query) {
    query = query.trim();
    offerEnrol(null);
    if (!query) return findMessage(t('need_query'), 'error');
    findMessage(t('searching'), 'muted');
    $('find-button').disabled = true;
    try {
      if (online()) {
        try {
          const answer = await api('GET', '/customers?key=' + encodeURIComponent(query));
          if (answer.status === 200) {
            remember(answer.data);
            findMessage(null);
            showCustomer(answer.data, {checked: true});
            $('find-key').value = '';
            return;
          }
          if (answer.status === 401) return revoked();
          if (answer.status === 404) {
            clearCustomer();
            offerEnrol(query);
            return findMessage(t('not_found'), 'error');
          }
          if (answer.status < 500) return findMessage(reason(answer), 'error');
        } catch (e) {
          if (!(e instanceof Offline)) throw e;
        }
      }
      // No connection: a customer seen here lately, or a card code taken on trust.
      const seen = recall(query);
      if (seen) {
        findMessage(null);
        showCustomer(seen.data, {checked: false, seenAt: seen.at});
      } else if (looksLikeCardCode(query)) {
        findMessage(null);
        showCustomer({card_code: cardCode(query), points: null, stamps: {}, rewards: []}, {checked: false, unknown: true});
      } else {
        return findMessage(t('offline_need_code'), 'error');
      }
      $('find-key').value = '';
    } finally {
      $('find-button').disabled = false;
    }
  }

  /** The current customer again from the API (after a batch went through). */
  async function refreshCustomer() {
    if (!customer || !online()) return;
    try {
      const answer = await api('GET', '/customers?key=' + encodeURIComponent(customer.data.card_code));
      if (answer.status === 200) {
        remember(answer.data);
        showCustomer(answer.data, {checked: true});
      }
    } catch (e) {
      if (!(e instanceof Offline)) throw e;
    }
  }

  // -- the customer at a glance ---------------------------------------------------------

  function clearCustomer() {
    customer = null;
    $('customer').hidden = true;
    $('actions').hidden = true;
  }

  function fullName(data) {
    return [data.first_name, data.last_name].filter(Boolean).join(' ');
  }

  function showCustomer(data, state) {
    const before = customer && customer.checked && customer.data.card_code === data.card_code ? customer.data : null;
    customer = {data, ...state};
    $('customer').hidden = false;
    $('actions').hidden = false;
    $('customer-name').textContent = fullName(data) || t('card', {code: data.card_code});
    $('customer-contact').textContent = [t('card', {code: data.card_code}), data.email, data.phone].filter(Boolean).join(' · ');
    const tier = $('customer-tier');
    tier.hidden = !data.tier;
    tier.textContent = data.tier ? title(data.tier) : '';
    const note = $('customer-note');
    const noteText = state.unknown ? t('offline_unchecked')
      : state.seenAt ? t('offline_cached', {time: moment(state.seenAt)}) : '';
    note.hidden = !noteText;
    note.textContent = noteText;
    $('customer-points').textContent = data.points === null || data.points === undefined ? '–' : number(data.points);
    const delta = $('customer-delta');
    const change = before && state.checked ? data.points - before.points : 0;
    delta.hidden = !change;
    delta.textContent = change ? tn('points_delta', Math.abs(change), {delta: (change > 0 ? '+' : '−') + number(Math.abs(change))}) : '';
    delta.classList.toggle('minus', change < 0);
    const pending = $('customer-pending');
    pending.hidden = !data.points_pending;
    pending.textContent = data.points_pending ? t('pending', {n: number(data.points_pending)}) : '';
    // the soonest day some of the points expire (the shop's day: shown as it is)
    const expiring = $('customer-expiring');
    const soonest = (data.points_expiring || [])[0];
    expiring.hidden = !soonest;
    expiring.textContent = soonest ? tn('expiring', soonest.points, {n: number(soonest.points), date: shopDay(soonest.on)}) : '';
    renderCards(data);
    renderHeld(data);
    renderRedeem(data, state);
    renderCustomerWaiting();
    renderBirthday(data, state, before);
  }

  /** Ask for the birthday of a customer whose birthday would bring them something (checked online). */
  function renderBirthday(data, state, before) {
    const form = $('customer-birthday');
    const asked = Boolean(data.birthday_wanted && state.checked);
    if (!before) $('customer-birthday-date').value = '';  // (another customer: what was typed is not theirs)
    form.hidden = !asked;
    $('customer-birthday-date').max = new Date().toISOString().slice(0, 10);
  }

  async function saveBirthday(event) {
    event.preventDefault();
    if (!customer) return;
    const birthday = $('customer-birthday-date').value;
    if (!birthday) return showResult(t('birthday_needed'), 'error');
    if (!online()) return showResult(t('birthday_offline'), 'error');
    const json = {card_code: customer.data.card_code, birthday};
    if (await postCustomer(json, uuid(), $('customer-birthday-button'), showResult, t('birthday_offline'))) {
      showResult(t('birthday_saved'), 'ok');
    }
  }

  function renderCustomerWaiting() {
    const node = $('customer-waiting');
    const n = customer && termKey
      ? loadQueue().filter((item) => item.state !== 'refused' && item.line.customer.card_code === customer.data.card_code).length
      : 0;
    node.hidden = !n;
    node.textContent = n ? t('customer_waiting', {n: number(n)}) : '';
  }

  function renderCards(data) {
    const box = $('customer-cards');
    box.replaceChildren();
    const known = new Map(C.cards.map((card) => [card.name, card]));
    const names = [...new Set([...C.cards.map((c) => c.name), ...Object.keys(data.stamps || {})])];
    for (const name of names) {
      const card = known.get(name);
      const count = (data.stamps || {})[name] || 0;
      const head = el('div', {class: 'head'}, el('span', {text: title(name)}),
        el('span', {text: card ? t('stamps', {n: count, required: card.required}) : number(count)}));
      let body = null;
      if (card && card.required <= 30) {
        const holes = [];
        for (let i = 0; i < card.required; i++) holes.push(el('span', {class: i < count ? 'hole full' : 'hole'}));
        const across = card.required <= 6 ? card.required : card.required <= 10 ? Math.ceil(card.required / 2) : 10;
        body = el('div', {class: card.required > 10 ? 'punch many' : 'punch', role: 'img',
          style: `grid-template-columns: repeat(${across}, 1fr)`,
          'aria-label': t('stamps', {n: count, required: card.required})}, holes);
      } else if (card) {
        body = el('div', {class: 'progress'}, el('span', {style: `width:${Math.min(100, 100 * count / card.required)}%`}));
      }
      const foot = card ? el('div', {class: 'muted small', text: t('full_card', {reward: title(card.reward)})}) : null;
      box.append(el('div', {class: 'stampcard', 'data-card': name, 'data-stamps': count}, head, body, foot));
    }
  }

  function renderHeld(data) {
    const list = $('customer-rewards-list');
    list.replaceChildren();
    const held = (data.rewards || []).filter((r) => !r.status || r.status === 'issued');
    $('customer-rewards').hidden = !held.length;
    const elsewhere = new Set(C.elsewhere || []);
    for (const reward of held) {
      // a reward the catalogue keeps for other channels: a sale here would not spend it
      const here = !elsewhere.has(reward.reward);
      list.append(el('li', {'data-reward': reward.reward, class: here ? null : 'elsewhere'},
        el('span', {}, el('strong', {text: title(reward.reward)}), ' ', el('code', {text: reward.code}),
          reward.expires_at ? el('span', {class: 'muted small', text: ' ' + t('expires', {date: day(reward.expires_at)})}) : null),
        here ? el('label', {}, el('input', {type: 'checkbox', name: 'reward_code', value: reward.code}), t('use_in_sale'))
          : el('span', {class: 'muted small', text: t('not_at_till')})));
    }
  }

  function rewardValue(reward) {
    if (reward.kind === 'fixed_amount' && reward.value) return money(reward.value);
    if (reward.kind === 'percentage' && reward.value) return number(Number(reward.value)) + ' %';
    return reward.sku || '';
  }

  function renderRedeem(data, state) {
    const list = $('redeem-list');
    list.replaceChildren();
    $('redeem').hidden = !C.rewards.length;
    $('redeem-note').hidden = state.checked;
    $('redeem-note').textContent = state.checked ? '' : t('redeem_offline');
    const spendable = (data.points || 0) - (data.points_pending || 0);
    for (const reward of C.rewards) {
      const short = reward.cost - spendable;
      const button = el('button', {type: 'button', class: 'secondary small-button', 'data-reward': reward.name,
        disabled: !state.checked || short > 0, onclick: () => redeem(reward.name, button)}, t('redeem'));
      list.append(el('li', {'data-reward': reward.name},
        el('span', {}, el('strong', {text: title(reward.name)}), ' ', el('span', {class: 'muted', text: rewardValue(reward)}),
          el('br'), el('span', {class: 'cost', text: state.checked && short > 0
            ? tn('redeem_cost', reward.cost, {cost: number(reward.cost)}) + ' · ' + tn('redeem_more', short, {n: number(short)})
            : tn('redeem_cost', reward.cost, {cost: number(reward.cost)})})),
        button));
    }
  }

  // -- results ------------------------------------------------------------------------------

  function showResult(text, kind, voidable, unused) {
    const node = $('result');
    node.hidden = !text;
    node.textContent = text || '';
    node.className = 'result' + (kind ? ' ' + kind : '');
    if (!voidable) lastSale = null;
    $('void-row').hidden = !lastSale;
    showUnusedCodes(unused || []);
  }

  /** Unused codes are said next to the result, each with why: the engine took
   * no reward for them, so the cashier must not give one. Used ones say nothing. */
  function showUnusedCodes(unused) {
    const list = $('result-codes');
    list.replaceChildren(...unused.map((c) => el('li', {'data-code': c.code, 'data-reason': c.reason},
      c.sale ? t('code_not_used_sent', {sale: c.sale, code: c.code, reason: whyNotUsed(c.reason)})
        : t('code_not_used', {code: c.code, reason: whyNotUsed(c.reason)}))));
    list.hidden = !unused.length;
  }

  /** A sale's answer's ``codes`` (or a batch line's): those the sale did not use. */
  function unusedCodes(codes, sale) {
    return (Array.isArray(codes) ? codes : []).filter((c) => c && !c.used)
      .map((c) => ({code: c.code, reason: c.reason, sale}));
  }

  /** The API's ``reason`` in the page's words; one this page doesn't know yet, as the API said it. */
  function whyNotUsed(why) {
    const name = 'code_' + why;
    return Object.prototype.hasOwnProperty.call(M, name) ? t(name) : String(why || '?');
  }

  // -- the sales recorded here, and voiding one --------------------------------------------

  /** Keep a sale this device recorded ({key, amount, who, at, unused}) on the list of sales
   * (``unused``: the codes it carried that the engine did not take, said there too). */
  function rememberSale(sale) {
    saveSales([{...sale, voided: false}, ...store.get(salesName(), []).filter((s) => s.key !== sale.key)]);
  }

  function saveSales(sales) {
    try { store.set(salesName(), sales.slice(0, SALES_MAX)); } catch (e) { /* a convenience only */ }
    renderSales();
  }

  function renderSales() {
    if (!termKey) return;
    const sales = store.get(salesName(), []);
    $('sales').hidden = !sales.length;
    const list = $('sales-list');
    list.replaceChildren();
    for (const sale of sales) {
      list.append(el('li', {class: sale.voided ? 'voided' : 'recorded', 'data-key': sale.key},
        el('span', {},
          el('span', {class: 'what', text: t('topic_sale', {amount: sale.amount})}), ' · ', el('span', {text: sale.who}),
          el('br'), el('span', {class: 'muted small', text: moment(sale.at)}),
          ...(sale.unused || []).map((c) => el('span', {class: 'code-warning small', 'data-code': c.code},
            t('code_not_used_listed', {code: c.code, reason: whyNotUsed(c.reason)})))),
        sale.voided ? el('span', {class: 'state', text: t('sale_voided')})
          : el('button', {type: 'button', class: 'secondary small-button', onclick: (e) => voidSale(sale.key, e.currentTarget)},
            t('void'))));
    }
  }

  /** Void a sale this device recorded (online only: the server takes back what it earned). */
  async function voidSale(saleKey, button) {
    const sale = store.get(salesName(), []).find((s) => s.key === saleKey) || (lastSale && lastSale.key === saleKey && lastSale);
    if (!sale) return;
    const last = !!lastSale && lastSale.key === saleKey;
    if (!online()) return showResult(t('void_offline'), 'error', last);
    if (!window.confirm(t('void_confirm', {amount: sale.amount}))) return;
    const key = uuid();
    button.disabled = true;
    try {
      const answer = await api('POST', '/sales/' + encodeURIComponent(sale.key) + '/void', {json: {}, idem: key});
      if (answer.status === 200 || answer.status === 201) {
        const after = answer.data && answer.data.customer;
        if (after) {
          remember(after);
          if (customer && customer.data.card_code === after.card_code) showCustomer(after, {checked: true});
        }
        saveSales(store.get(salesName(), []).map((s) => (s.key === saleKey ? {...s, voided: true} : s)));
        showResult(t('voided', {amount: sale.amount}), 'ok'); // ("void this sale" would now be ambiguous)
      } else if (answer.status === 401) {
        revoked();
      } else {
        showResult(t('refused', {reason: reason(answer)}), 'error', last);
      }
    } catch (e) {
      if (!(e instanceof Offline)) throw e;
      showResult(t('void_offline'), 'error', last);
    } finally {
      button.disabled = false;
    }
  }

  function newRewards(before, after) {
    const had = new Set(((before && before.rewards) || []).map((r) => r.code));
    return ((after && after.rewards) || []).filter((r) => !had.has(r.code));
  }

  // -- sales and visits ------------------------------------------------------------------

  function addLine() {
    const line = $('line-template').content.firstElementChild.cloneNode(true);
    line.querySelector('.remove-line').addEventListener('click', () => { line.remove(); renderTotal(); });
    line.addEventListener('input', renderTotal);
    $('sale-lines').append(line);
    line.querySelector('input[name=sku]').focus();
  }

  /** The sale's lines as the API takes them, and its total; null (with a message) when wrong. */
  function readSale() {
    const lines = [];
    let total = 0;
    for (const row of $('sale-lines').querySelectorAll('.line')) {
      const sku = row.querySelector('[name=sku]').value.trim();
      const quantityText = row.querySelector('[name=quantity]').value.trim();
      const priceText = row.querySelector('[name=unit_price]').value;
      if (!sku && !priceText.trim()) continue;
      const price = parseMoney(priceText);
      const quantity = Number(quantityText);
      if (!price || !Number.isInteger(quantity) || quantity < 1 || quantity > 1000000) return {error: t('line_invalid')};
      lines.push({sku: sku || null, quantity, unit_price: price});
      total += quantity * Number(price);
    }
    const amount = parseMoney($('sale-amount').value);
    if (amount === null) return {error: t('amount_invalid')};
    if (amount && Number(amount) > 0) {
      lines.push({quantity: 1, unit_price: amount});
      total += Number(amount);
    }
    if (!lines.length) return {error: t('amount_invalid')};
    return {lines, total};
  }

  function renderTotal() {
    const sale = readSale();
    $('sale-total').textContent = sale.error ? '' : t('total', {amount: money(sale.total)});
  }

  function resetSale() {
    $('sale-amount').value = '';
    $('sale-lines').replaceChildren();
    $('sale-total').textContent = '';
  }

  async function recordSale(event) {
    event.preventDefault();
    if (!customer) return;
    const sale = readSale();
    if (sale.error) return showResult(sale.error, 'error');
    const codes = [...document.querySelectorAll('#customer-rewards-list input[name=reward_code]:checked')].map((i) => i.value);
    const extra = {lines: sale.lines};
    if (codes.length) extra.reward_codes = codes;
    const done = await record('sale', extra, $('sale-button'), {amount: money(sale.total)});
    if (done) resetSale();
  }

  async function recordVisit() {
    if (customer) await record('visit', {}, $('visit-button'), {});
  }

  /** A sale or a visit: its key made now; online if it can be, else queued. */
  async function record(topic, extra, button, info) {
    const key = uuid();
    const body = {id: key, occurred_at: new Date().toISOString(), customer: {card_code: customer.data.card_code}, ...extra};
    const label = topic === 'sale' ? t('topic_sale', {amount: info.amount}) : t('topic_visit');
    const who = fullName(customer.data) || customer.data.card_code;
    let tried = false; // sent, and no answer came: it may have been recorded
    button.disabled = true;
    try {
      if (online()) {
        try {
          tried = true;
          const answer = await api('POST', topic === 'sale' ? '/sales' : '/visits', {json: body, idem: key});
          if (answer.status === 200 || answer.status === 201) {
            const before = customer.data;
            if (answer.data.customer) {
              remember(answer.data.customer);
              showCustomer(answer.data.customer, {checked: true});
            }
            const lines = [answer.data.status === 'duplicate' ? t('duplicate')
              : topic === 'sale' ? t('sale_done', {amount: info.amount}) : t('visit_done')];
            for (const r of newRewards(before, answer.data.customer)) lines.push(t('new_reward', {reward: r.reward, code: r.code}));
            const voidable = topic === 'sale' && answer.data.status !== 'duplicate';
            if (voidable) {
              lastSale = {key, amount: info.amount};
              rememberSale({key, amount: info.amount, who, at: body.occurred_at, unused: unusedCodes(answer.data.codes)});
            }
            showResult(lines.join(' '), 'ok', voidable, unusedCodes(answer.data.codes));
            return true;
          }
          if (answer.status === 401) { revoked(); return false; }
          if (answer.status < 500) { showResult(t('refused', {reason: reason(answer)}), 'error'); return false; }
          // 5xx: the server is there but can't take it now; keep it like an offline one
        } catch (e) {
          if (!(e instanceof Offline)) throw e;
        }
      }
      try {
        enqueue({key, topic, line: {topic, key, ...body}, label, who, at: body.occurred_at, state: 'waiting', reason: null,
          tried, amount: info.amount});
      } catch (e) {
        showResult(t('refused', {reason: String(e && e.message || e)}), 'error');
        return false;
      }
      showResult(t('queued'), 'queued');
      return true;
    } finally {
      button.disabled = false;
    }
  }

  // -- redeeming -------------------------------------------------------------------------

  async function redeem(name, button) {
    if (!customer || !customer.checked) return;
    if (!online()) return showResult(t('redeem_offline'), 'error');
    const slot = customer.data.card_code + '|' + name;
    const key = redeemKeys[slot] || (redeemKeys[slot] = uuid());
    button.disabled = true;
    let answer;
    try {
      answer = await api('POST', '/redemptions', {json: {customer: {card_code: customer.data.card_code}, reward: name,
        channel: C.channel}, idem: key});
    } catch (e) {
      if (!(e instanceof Offline)) throw e;
      button.disabled = false;
      return showResult(t('redeem_offline'), 'error');
    }
    delete redeemKeys[slot];
    if (answer.status === 401) return revoked();
    if (answer.status === 201 || answer.status === 200) {
      remember(answer.data.customer);
      showCustomer(answer.data.customer, {checked: true});
      return showResult(t('redeemed', {reward: answer.data.reward.reward, code: answer.data.reward.code}), 'ok');
    }
    button.disabled = false;
    showResult(t('refused', {reason: reason(answer)}), 'error');
  }

  // -- the waiting queue and the offline batch ---------------------------------------------

  function saveQueue(queue) {
    store.set(queueName(), queue);
    renderQueue();
  }

  function enqueue(item) {
    saveQueue([...loadQueue(), item]);
  }

  function renderQueue() {
    if (!termKey) return;
    const queue = loadQueue();
    const inFlight = new Set((store.get(inflightName(), null) || {keys: []}).keys);
    $('waiting').hidden = !queue.length;
    const pill = $('waiting-count');
    pill.hidden = !queue.length;
    pill.textContent = t('waiting_count', {n: queue.length});
    $('waiting-number').textContent = number(queue.length);
    renderCustomerWaiting();
    const list = $('waiting-list');
    list.replaceChildren();
    for (const item of queue) {
      const refused = item.state === 'refused';
      const state = refused ? t('state_refused', {reason: item.reason || ''})
        : sending && inFlight.has(item.key) ? t('state_sending') : t('state_waiting');
      list.append(el('li', {class: refused ? 'refused' : 'waiting', 'data-key': item.key, 'data-topic': item.topic},
        el('span', {},
          el('span', {class: 'what', text: item.label}), ' · ', el('span', {text: item.who}), el('br'),
          el('span', {class: 'muted small', text: moment(item.at)}), ' ', el('span', {class: 'state', text: state}),
          refused && item.tried ? el('span', {class: 'muted small hint', text: t('maybe_recorded')}) : null),
        refused ? el('button', {type: 'button', class: 'secondary small-button', onclick: () => discard(item.key)}, t('discard')) : null));
    }
  }

  function discard(key) {
    if (!window.confirm(t('discard_confirm'))) return;
    saveQueue(loadQueue().filter((item) => item.key !== key));
  }

  /** Send what waits as one offline batch; one sender at a time. */
  function flush(manual) {
    if (!flushing) {
      flushing = sendBatches(manual).finally(() => { flushing = null; renderQueue(); });
    }
    return flushing;
  }

  async function sendBatches(manual) {
    const done = {sent: false, unused: []}; // what went, and the codes its sales carried that the engine did not take
    const stopped = await sendEach(done);
    if (stopped === 'revoked') return revoked();
    if (done.sent) {
      // Said even when a later batch could not go (actions queued while one was on its way).
      if (stopped) showResult(t('sent_some'), 'queued', false, done.unused);
      else showResult(t('sent'), 'ok', false, done.unused);
      await refreshCustomer();
    } else if (stopped === 'failed') {
      if (manual) showResult(t('send_failed'), 'queued');
    } else if (stopped) {
      showResult(t('refused', {reason: stopped.reason}), 'error');
    }
  }

  /** Send batch after batch until nothing waits; ``done`` gathers what went.
   * Returns null when all went, 'failed' (no connection, a 5xx: they wait),
   * 'revoked', or ``{reason}`` when the API refused the batch. */
  async function sendEach(done) {
    for (;;) {
      if (!termKey) return null;
      // A batch whose answer never came goes again first, byte for byte, under
      // its own key: the API then answers it as it did (or does) the first time.
      let batch = store.get(inflightName(), null);
      if (!batch) {
        const waiting = loadQueue().filter((item) => item.state !== 'refused');
        if (!waiting.length) break;
        batch = {idem: uuid(), keys: waiting.map((item) => item.key),
          body: waiting.map((item) => JSON.stringify(item.line)).join('\n') + '\n'};
        store.set(inflightName(), batch);
      }
      sending = true;
      renderQueue();
      let answer;
      try {
        answer = await api('POST', '/batches', {body: batch.body, idem: batch.idem, type: 'application/x-ndjson'});
      } catch (e) {
        if (!(e instanceof Offline)) throw e;
        return 'failed';
      } finally {
        sending = false;
      }
      if (answer.status === 401) return 'revoked';
      if (answer.status >= 500) return 'failed';
      store.del(inflightName());
      store.set('last-batch.' + terminal(), {idem: batch.idem, body: batch.body, at: new Date().toISOString()});
      if (answer.status !== 200 || !answer.data || !Array.isArray(answer.data.results)) {
        return {reason: reason(answer)};
      }
      const outcome = new Map();
      for (const result of answer.data.results) {
        const key = result.key || batch.keys[result.line - 1];
        if (key) outcome.set(key, result);
      }
      const queue = [];
      for (const item of loadQueue()) {
        const result = outcome.get(item.key);
        if (result && (result.status === 'applied' || result.status === 'duplicate')) {
          done.sent = true;
          const codes = unusedCodes(result.codes, item.label + ' · ' + item.who);
          done.unused.push(...codes);
          if (item.topic === 'sale' && result.status === 'applied') {
            rememberSale({key: item.key, amount: item.amount || '', who: item.who, at: item.at, unused: codes});
          }
          continue; // counted (now or before): off the list
        }
        if (result) {
          item.state = 'refused';
          item.reason = result.reason || result.status;
        }
        queue.push(item);
      }
      saveQueue(queue);
    }
  }

  // -- the camera -----------------------------------------------------------------------------

  let scanning = null;

  async function setUpScanner() {
    if (!('BarcodeDetector' in window) || !navigator.mediaDevices || !navigator.mediaDevices.getUserMedia) return;
    try {
      const formats = await window.BarcodeDetector.getSupportedFormats();
      if (Array.isArray(formats) && !formats.includes('qr_code')) return;
    } catch (e) { /* can't tell: offer it */ }
    $('scan-button').hidden = false;
  }

  async function startScan() {
    if (scanning) return;
    const session = {stopped: false, stream: null, timer: null};
    scanning = session;
    $('scanner').hidden = false;
    const video = $('scanner-video');
    try {
      session.stream = await navigator.mediaDevices.getUserMedia({video: {facingMode: {ideal: 'environment'}}, audio: false});
    } catch (e) {
      stopScan();
      return findMessage(t('camera_error', {reason: e && (e.name || e.message) || e}), 'error');
    }
    if (session.stopped) return stopStream(session);
    video.srcObject = session.stream;
    try { await video.play(); } catch (e) { /* muted inline video plays; a refusal shows nothing */ }
    const detector = new window.BarcodeDetector({formats: ['qr_code']});
    const tick = async () => {
      if (session.stopped) return;
      if (video.readyState >= 2) {
        try {
          const codes = await detector.detect(video);
          const hit = codes.find((c) => c.rawValue && c.rawValue.trim());
          if (hit && !session.stopped) {
            stopScan();
            $('find-key').value = hit.rawValue.trim();
            return find(hit.rawValue);
          }
        } catch (e) { /* a frame it couldn't read */ }
      }
      session.timer = setTimeout(() => requestAnimationFrame(tick), 120);
    };
    tick();
  }

  function stopStream(session) {
    if (session.stream) session.stream.getTracks().forEach((track) => track.stop());
  }

  function stopScan() {
    const session = scanning;
    scanning = null;
    $('scanner').hidden = true;
    $('scanner-video').srcObject = null;
    if (!session) return;
    session.stopped = true;
    clearTimeout(session.timer);
    stopStream(session);
  }

  // -- wiring ---------------------------------------------------------------------------------

  $('signin-form').addEventListener('submit', signIn);
  $('signout').addEventListener('click', signOut);
  $('find-form').addEventListener('submit', (event) => { event.preventDefault(); find($('find-key').value); });
  $('scan-button').addEventListener('click', startScan);
  $('scanner-cancel').addEventListener('click', stopScan);
  document.addEventListener('keydown', (event) => { if (event.key === 'Escape' && scanning) stopScan(); });
  $('sale-form').addEventListener('submit', recordSale);
  $('sale-amount').addEventListener('input', renderTotal);
  $('add-line').addEventListener('click', addLine);
  $('visit-button').addEventListener('click', recordVisit);
  $('enrol-button').addEventListener('click', enrol);
  $('customer-birthday').addEventListener('submit', saveBirthday);
  $('void-button').addEventListener('click', (e) => lastSale && voidSale(lastSale.key, e.currentTarget));
  $('send-now').addEventListener('click', () => flush(true));
  $('waiting-count').addEventListener('click', () => $('waiting').scrollIntoView({behavior: 'smooth'}));
  window.addEventListener('online', () => { reachable = true; renderNet(); flush(); });
  window.addEventListener('offline', renderNet);
  window.addEventListener('storage', (event) => {
    if (event.key === PREFIX + 'key') { // signed in or out in another tab
      if (!event.newValue) return revoked(null);
      termKey = store.get('key', null);
      return showTill();
    }
    if (event.key && event.key.startsWith(PREFIX)) renderQueue();
  });
  setInterval(() => {
    if (termKey && online() && loadQueue().some((item) => item.state !== 'refused')) flush();
  }, RETRY_MS);

  setUpScanner();
  if ('serviceWorker' in navigator && window.isSecureContext) {
    navigator.serviceWorker.register(C.worker, {scope: C.scope}).catch(() => { /* the page works without it */ });
  }
  if (termKey) {
    showTill();
    if (online()) flush();
  } else {
    showSignin(null);
  }
})();
