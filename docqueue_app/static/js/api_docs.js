// Starts Swagger UI (served by the app, /api/docs/assets/) on the app's OpenAPI
// document. In a file of its own: the page's CSP allows no inline script.
(function () {
  "use strict";

  var root = document.getElementById("swagger-ui");
  window.SwaggerUIBundle({
    url: root.getAttribute("data-spec-url"),
    domNode: root,
    presets: [window.SwaggerUIBundle.presets.apis],
    layout: "BaseLayout",
    // No deep links: Swagger UI puts each one inside its operation's button, a link
    // in a button that screen readers may not announce and that takes a Tab stop of
    // its own (axe-core: nested-interactive).
    deepLinking: false,
    // No badge fetched from validator.swagger.io: nothing leaves this host.
    validatorUrl: null,
  });
})();
