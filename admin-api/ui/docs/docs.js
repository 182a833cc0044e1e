// Starts Swagger UI on /openapi.json. Loaded as a file (the page's CSP allows no
// inline script). Signed in to the console in this tab? Then "Try it out" uses that
// session's token; otherwise use the Authorize button. Nothing is persisted.
(function () {
  'use strict';
  var SESSION_KEY = 'tenantgate.console.session';

  function consoleToken() {
    try {
      var raw = window.sessionStorage.getItem(SESSION_KEY);
      var s = raw ? JSON.parse(raw) : null;
      if (!s || typeof s.token !== 'string') return null;
      if (s.expiresAt && Date.now() >= s.expiresAt) return null;
      return s;
    } catch (e) {
      return null;
    }
  }

  var ui = window.SwaggerUIBundle({
    url: '/openapi.json',
    dom_id: '#swagger-ui',
    deepLinking: true,
    docExpansion: 'list',
    defaultModelsExpandDepth: 0,
    displayRequestDuration: true,
    filter: true,
    // Never write the token to localStorage; no calls to the public validator.
    persistAuthorization: false,
    validatorUrl: null,
    onComplete: function () {
      var s = consoleToken();
      if (!s) return;
      ui.preauthorizeApiKey('bearer', s.token);
      var note = document.getElementById('tg-auth-note');
      note.textContent = 'Try it out is signed in as ' + s.label +
        ' (your console session in this tab). Use Authorize to change it.';
      note.hidden = false;
    }
  });
})();
