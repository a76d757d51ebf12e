/* geolocus map: draws the data embedded in #geolocus-data with Leaflet, offline.
 * Every user-supplied string (place names, photo ids) reaches the page through
 * textContent only, never as HTML. Coordinates are [lat, lon] as in Leaflet;
 * the outline GeoJSON is [lon, lat] as in GeoJSON. */
(function () {
  "use strict";
  var D = JSON.parse(document.getElementById("geolocus-data").textContent);
  var W = JSON.parse(document.getElementById("geolocus-world").textContent);

  function el(tag, text, cls) {
    var e = document.createElement(tag);
    if (text !== undefined && text !== null) e.textContent = String(text);
    if (cls) e.className = cls;
    return e;
  }
  function table(title, rows) {
    var d = el("div", null, "gl-popup");
    d.appendChild(el("div", title, "gl-popup-title"));
    var t = el("table");
    rows.forEach(function (r) {
      if (r[1] === null || r[1] === undefined || r[1] === "") return;
      var tr = el("tr");
      tr.appendChild(el("th", r[0]));
      tr.appendChild(el("td", r[1]));
      t.appendChild(tr);
    });
    d.appendChild(t);
    return d;
  }
  function coords(p) { return p.lat.toFixed(5) + ", " + p.lon.toFixed(5); }
  function km(x) { return x === null || x === undefined ? null : (x < 10 ? x.toFixed(2) : x.toFixed(0)) + " km"; }

  var map = L.map("map", { zoomSnap: 0.25, worldCopyJump: false, minZoom: 1 });
  L.control.scale({ imperial: false }).addTo(map);
  D.credits.forEach(function (c) { map.attributionControl.addAttribution(c); });

  // Offline world: Natural Earth 1:110m countries, drawn at three longitudes so that
  // views across the antimeridian still show land.
  var outlineStyle = { color: "#8c8c8c", weight: 0.7, fillColor: "#f3f0e8", fillOpacity: 1 };
  var outline = L.layerGroup();
  [-360, 0, 360].forEach(function (off) {
    L.geoJSON(W, {
      interactive: false,
      style: outlineStyle,
      attribution: off === 0 ? "Outlines: Natural Earth (public domain)" : undefined,
      coordsToLatLng: function (c) { return L.latLng(c[1], c[0] + off); }
    }).addTo(outline);
  });
  outline.addTo(map);

  // Finer (1:50m) coastlines of the countries near the points, shown when zoomed in,
  // in place of the coarse outlines of the same countries.
  var Fine = JSON.parse(document.getElementById("geolocus-detail").textContent);
  var DETAIL_ZOOM = 4;
  var fine = null, syncDetail = null;
  if (Fine && Fine.features.length) {
    fine = L.geoJSON(Fine, { interactive: false, style: outlineStyle });
    var fineKeys = {};
    Fine.features.forEach(function (f) { fineKeys[f.properties.key] = true; });
    var coarseOfFine = [];
    outline.eachLayer(function (g) {
      g.eachLayer(function (f) {
        var key = String(f.feature.id || (f.feature.properties || {}).name || "");
        if (fineKeys[key]) coarseOfFine.push(f);
      });
    });
    syncDetail = function () {
      var on = map.getZoom() >= DETAIL_ZOOM && map.hasLayer(outline);
      map.getContainer().setAttribute("data-detail", on ? "on" : "off");
      if (on && !map.hasLayer(fine)) fine.addTo(map).bringToBack();
      if (!on && map.hasLayer(fine)) map.removeLayer(fine);
      coarseOfFine.forEach(function (f) {
        f.setStyle(on ? { opacity: 0, fillOpacity: 0 }
                      : { opacity: 1, fillOpacity: outlineStyle.fillOpacity });
      });
    };
    map.on("zoomend overlayadd overlayremove", syncDetail);
  }

  var tiles = L.tileLayer(D.tiles.url, { maxZoom: 19, attribution: D.tiles.attribution });
  map.on("overlayadd overlayremove", function (e) {
    if (e.layer !== tiles) return;  // show the tiles through the outlines when they are on
    outlineStyle.fillOpacity = e.type === "overlayadd" ? 0 : 1;
    outline.eachLayer(function (g) { g.setStyle({ fillOpacity: outlineStyle.fillOpacity }); });
    if (fine) fine.setStyle({ fillOpacity: outlineStyle.fillOpacity });
    if (syncDetail) syncDetail();
  });

  var bounds = [];
  var near = L.layerGroup(), far = L.layerGroup(), circles = L.layerGroup();
  var guesses = L.layerGroup(), truth = L.layerGroup(), heat = L.layerGroup();

  // The model's probability of each gallery location: [lat, lon shown, p] triples, drawn
  // on one canvas under everything else (thousands of points), colour and size by p.
  var H = D.heat || [], hmax = 0;
  H.forEach(function (h) { if (h[2] > hmax) hmax = h[2]; });
  var heatCanvas = L.canvas({ padding: 0.2 });
  function ramp(t) {
    var lo = [0xfe, 0xe0, 0x8b], hi = [0xd7, 0x30, 0x27];
    return "rgb(" + lo.map(function (v, i) { return Math.round(v + (hi[i] - v) * t); }).join(",") + ")";
  }
  H.forEach(function (h) {
    var t = hmax > 0 ? Math.sqrt(h[2] / hmax) : 0;
    L.circleMarker([h[0], h[1]], {
      renderer: heatCanvas, radius: 2 + 6 * t, stroke: false, interactive: false,
      fillColor: ramp(t), fillOpacity: 0.2 + 0.6 * t
    }).addTo(heat);
  });

  D.far.forEach(function (p, i) {
    L.circleMarker([p.lat, p.lon_shown], {
      radius: 3, color: "#7b3294", weight: 1.2, fill: false, dashArray: "2,2"
    }).bindPopup(table("Far neighbour " + (i + 1), [
      ["id", p.id], ["lat, lon", coords(p)], ["to guess 1", km(p.to_top_km)]
    ])).addTo(far);
  });
  D.near.forEach(function (p, i) {
    L.circleMarker([p.lat, p.lon_shown], {
      radius: 3.5, color: "#1f5f99", weight: 1, fillColor: "#2c7bb6", fillOpacity: 0.85
    }).bindPopup(table("Neighbour " + (i + 1), [
      ["id", p.id], ["lat, lon", coords(p)], ["to guess 1", km(p.to_top_km)]
    ])).addTo(near);
    bounds.push([p.lat, p.lon_shown]);
  });

  // Guesses, drawn last-to-first so that guess 1 is on top.
  D.guesses.slice().reverse().forEach(function (g) {
    var ll = [g.lat, g.lon_shown];
    if (g.radius_km) {
      L.circle(ll, {
        radius: g.radius_km * 1000, color: g.color, weight: 1.2, dashArray: "4,4",
        fillColor: g.color, fillOpacity: 0.08, interactive: false
      }).addTo(circles);
    }
    var pop = table("Guess " + g.rank + (g.label ? ": " + g.label : ""), [
      ["place", g.label],
      ["lat, lon", coords(g)],
      ["confidence", g.confidence_text],
      ["uncertainty", g.radius_km ? "\u00b1 " + km(g.radius_km) : null],
      ["to truth", km(g.to_truth_km)]
    ]);
    var m = L.circleMarker(ll, {
      radius: g.size, color: "#3a0a0a", weight: 1.2, fillColor: g.color, fillOpacity: 0.9
    }).bindPopup(pop);
    m.bindTooltip(el("span", String(g.rank)), {
      permanent: true, direction: "center", className: "gl-rank"
    });
    m.addTo(guesses);
    bounds.push(ll);
  });

  if (D.truth) {
    var t = D.truth, tl = [t.lat, t.lon_shown];
    if (D.guesses.length) {
      var g0 = D.guesses[0];
      L.polyline([[g0.lat, g0.lon_shown], tl], {
        color: "#1a9641", weight: 1.5, dashArray: "6,4", interactive: false
      }).addTo(truth);
    }
    L.circleMarker(tl, {
      radius: 7, color: "#000", weight: 2, fillColor: "#1a9641", fillOpacity: 1
    }).bindPopup(table("True location", [
      ["place", t.label], ["lat, lon", coords(t)], ["error of guess 1", km(t.error_km)]
    ])).bindTooltip(el("span", "truth"), { direction: "right", offset: [8, 0] }).addTo(truth);
    bounds.push(tl);
  }

  [heat, circles, far, near, truth, guesses].forEach(function (g) { g.addTo(map); });
  var overlays = {};
  overlays["Country outlines (offline)"] = outline;
  overlays["OpenStreetMap tiles (online)"] = tiles;
  if (D.guesses.some(function (g) { return g.radius_km; })) overlays["Uncertainty circles"] = circles;
  if (H.length) overlays["Probability heatmap"] = heat;
  overlays["Guesses"] = guesses;
  if (D.near.length) overlays["Neighbours"] = near;
  if (D.far.length) overlays["Far neighbours"] = far;
  if (D.truth) overlays["True location"] = truth;
  L.control.layers(null, overlays, { collapsed: false, position: "topright" }).addTo(map);

  var legend = L.control({ position: "bottomright" });
  legend.onAdd = function () {
    var d = el("div", null, "gl-legend");
    function row(style, text) {
      var r = el("div"), s = el("span", null, "gl-swatch");
      s.setAttribute("style", style);
      r.appendChild(s); r.appendChild(el("span", text)); d.appendChild(r);
    }
    row("background:#d73027;border-color:#3a0a0a;width:14px;height:14px", "guess (size, colour: confidence)");
    if (D.near.length) row("background:#2c7bb6;border-color:#1f5f99", "retrieved neighbour");
    if (D.far.length) row("background:none;border:1px dashed #7b3294", "far neighbour");
    if (D.truth) row("background:#1a9641;border:2px solid #000", "true location");
    if (H.length) row("background:#fc8d59;border:none;opacity:0.6", "model's probability (heatmap)");
    return d;
  };
  legend.addTo(map);

  // For scripting and debugging: the map and its layer groups.
  window.geolocusMap = {
    map: map, guesses: guesses, neighbours: near, far: far, truth: truth, heat: heat
  };

  if (bounds.length === 0) {
    map.setView([20, 0], 2);
  } else {
    var b = L.latLngBounds(bounds);
    if (b.getNorthEast().equals(b.getSouthWest())) map.setView(b.getCenter(), 6);
    else map.fitBounds(b, { paddingTopLeft: [50, 50], paddingBottomRight: [240, 50], maxZoom: 11 });
  }
  if (syncDetail) syncDetail();
})();
