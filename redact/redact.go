// Package redact makes error text fit for a status or an event: what the
// runtime, a registry or a download said, without what only its client
// should see. Every message prepull copies from an error into a
// NodeImageSet's or a PrePullList's status passes through Text.
package redact

import (
	"net/url"
	"regexp"
	"strings"
	"unicode/utf8"
)

// urlRE finds URLs: a scheme, "://", and what follows up to a space, a
// quote or an angle bracket.
var urlRE = regexp.MustCompile(`[a-zA-Z][a-zA-Z0-9+.-]*://[^\s"'<>]+`)

// paramRE finds query parameters that sign or authorize a request, outside
// a URL too (some clients print the query alone).
var paramRE = regexp.MustCompile(`(?i)\b((?:x-amz-|x-goog-)?(?:signature|credential|security-token|token|sig|access_token))=[^&\s"'<>]+`)

// markupRE finds an XML or HTML document a server answered with, to the
// end of the text: object stores answer errors so, and they may repeat the
// signed request.
var markupRE = regexp.MustCompile(`(?s)<\?xml.*|<(?:Error|html|HTML)[\s>].*`)

// Max is the longest text Text returns.
const Max = 1024

// Text is s without the query strings, fragments and user information of
// the URLs in it, without signing parameters anywhere, and without an XML
// or HTML document a server answered with; at most Max bytes.
func Text(s string) string {
	s = markupRE.ReplaceAllString(s, "(the server's answer is not shown)")
	s = urlRE.ReplaceAllStringFunc(s, cleanURL)
	s = paramRE.ReplaceAllString(s, "$1=…")
	if len(s) > Max {
		cut := Max - len("...")
		for cut > 0 && !utf8.RuneStart(s[cut]) {
			cut--
		}
		s = s[:cut] + "..."
	}
	return s
}

// cleanURL is u with neither user information, nor query, nor fragment;
// a query it had is shown as "?…".
func cleanURL(u string) string {
	// Punctuation that ends a sentence or a quote is not the URL's.
	trail := ""
	for len(u) > 0 && strings.ContainsRune(".,;:)]}", rune(u[len(u)-1])) {
		trail = u[len(u)-1:] + trail
		u = u[:len(u)-1]
	}
	p, err := url.Parse(u)
	if err != nil {
		// Not a URL it can read: keep its scheme and host at most.
		if i := strings.IndexAny(u, "?#"); i >= 0 {
			u = u[:i] + "?…"
		}
		if at := strings.LastIndex(u, "@"); at >= 0 {
			if s := strings.Index(u, "://"); s >= 0 && s < at {
				u = u[:s+3] + u[at+1:]
			}
		}
		return u + trail
	}
	query := p.RawQuery != "" || p.ForceQuery
	p.User, p.RawQuery, p.ForceQuery, p.Fragment, p.RawFragment = nil, "", false, "", ""
	out := p.String()
	if query {
		out += "?…"
	}
	return out + trail
}
