/* The counter's service worker (served as /counter-sw.js, scope /counter):
 * keeps the page's shell (the page, its styles and script) so that a reload
 * without a network still opens the counter. Network first, so an online
 * till always gets the current page; the cache only answers when the network
 * doesn't. The API is never cached or answered from here: the page queues
 * its writes itself. */
'use strict';

const CACHE = 'regulars-counter-v1';
const SCOPE = new URL(self.registration.scope);
const SHELL = [
  SCOPE.href,
  new URL('static/pages.css', SCOPE).href,
  new URL('static/counter.css', SCOPE).href,
  new URL('static/counter.js', SCOPE).href,
];
const STATIC = new URL('static/', SCOPE).pathname;
const LOGO = new URL('branding/logo', SCOPE).pathname;

self.addEventListener('install', (event) => {
  event.waitUntil(caches.open(CACHE).then((cache) => cache.addAll(SHELL)).then(() => self.skipWaiting()));
});

self.addEventListener('activate', (event) => {
  event.waitUntil(caches.keys()
    .then((names) => Promise.all(names.filter((n) => n.startsWith('regulars-counter-') && n !== CACHE)
      .map((n) => caches.delete(n))))
    .then(() => self.clients.claim()));
});

function isShell(url) {
  if (url.origin !== SCOPE.origin) return false;
  return url.pathname === SCOPE.pathname || url.pathname.startsWith(STATIC) || url.pathname === LOGO;
}

async function networkFirst(request) {
  const cache = await caches.open(CACHE);
  try {
    const response = await fetch(request);
    if (response.ok) {
      const url = new URL(request.url);
      // The page under its own address, whatever ?lang= it was asked with.
      const key = url.pathname === SCOPE.pathname ? SCOPE.href : request;
      await cache.put(key, response.clone());
    }
    return response;
  } catch (error) {
    const url = new URL(request.url);
    const kept = await cache.match(request, {ignoreSearch: true})
      || (url.pathname === SCOPE.pathname ? await cache.match(SCOPE.href) : undefined);
    if (kept) return kept;
    throw error;
  }
}

self.addEventListener('fetch', (event) => {
  const request = event.request;
  if (request.method !== 'GET') return;
  const url = new URL(request.url);
  if (!isShell(url)) return; // the API and everything else: straight to the network
  event.respondWith(networkFirst(request));
});
