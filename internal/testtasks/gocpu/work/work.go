// Package work is what the gocpu task does per invocation, apart from its
// Lambda plumbing, so that tests and benchmarks can run it in process (to
// profile it for go build -pgo, or to time it): it decodes a batch of
// orders (a few hundred KB of JSON), checks and prices them through the
// configured rules, finds e-mail addresses, phone numbers, order
// references and URLs in their notes with regular expressions and
// redacts them, analyses the notes' words (stems, term scores, a topic
// from hashed character trigrams), then encodes the report as JSON and
// gzips it. The same event gives the same summary.
//
// The rules are interfaces picked by name when the package starts (as a
// handler configured from its environment would), so the compiler cannot
// see through them; the hot ones are small methods called per rune, per
// word or per feature. That is the shape profile-guided optimisation pays
// off on: with a profile, go build devirtualises the hot interface calls
// and inlines them. The hot loop (analyse) makes those calls itself:
// PGO's inliner knows a call site as hot only in the function the
// profile saw it in, so a hot call inside a function inlined elsewhere
// goes back to the ordinary budget (a tokeniser called per word that
// read runes per call left them as calls).
package work

import (
	"bytes"
	"compress/gzip"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"io"
	"math"
	"regexp"
	"slices"
	"strings"
	"sync"
	"unicode/utf8"
)

// Batch is the task's event.
type Batch struct {
	Source string  `json:"source"`
	Orders []Order `json:"orders"`
}

// Order is one order of a batch.
type Order struct {
	ID       string   `json:"id"`
	Customer Customer `json:"customer"`
	Items    []Item   `json:"items"`
	Notes    string   `json:"notes"`
	Tags     []string `json:"tags,omitempty"`
	Currency string   `json:"currency"`
	Created  string   `json:"created"`
}

// Customer is who placed an order.
type Customer struct {
	Name    string `json:"name"`
	Email   string `json:"email"`
	Phone   string `json:"phone"`
	Country string `json:"country"`
}

// Item is one line of an order; Cents is the unit price.
type Item struct {
	SKU      string `json:"sku"`
	Qty      int    `json:"qty"`
	Cents    int64  `json:"cents"`
	Category string `json:"category"`
}

// Summary is the task's answer.
type Summary struct {
	Source   string `json:"source"`
	Orders   int    `json:"orders"`
	Items    int    `json:"items"`
	Flagged  int    `json:"flagged"`
	Revenue  int64  `json:"revenue_cents"`
	Emails   int    `json:"emails"`
	Phones   int    `json:"phones"`
	Refs     int    `json:"refs"`
	URLs     int    `json:"urls"`
	Terms    []Term `json:"top_terms"`
	Report   int    `json:"report_bytes"`
	Gzipped  int    `json:"gzipped_bytes"`
	ReportID string `json:"report_sha256"`
}

// Term is a word of the notes and its score.
type Term struct {
	Word  string  `json:"word"`
	Count int     `json:"count"`
	Score float64 `json:"score"`
}

// enriched is an order as the report has it.
type enriched struct {
	ID       string   `json:"id"`
	Customer string   `json:"customer"`
	Country  string   `json:"country"`
	Currency string   `json:"currency"`
	Total    int64    `json:"total_cents"`
	Lines    []line   `json:"lines"`
	Emails   []string `json:"emails,omitempty"`
	Phones   []string `json:"phones,omitempty"`
	Refs     []string `json:"refs,omitempty"`
	URLs     []string `json:"urls,omitempty"`
	Excerpt  string   `json:"excerpt"` // the notes' start, redacted
	Terms    []Term   `json:"terms"`
	Topic    string   `json:"topic"`
	Flags    []string `json:"flags,omitempty"`
}

type line struct {
	SKU   string `json:"sku"`
	Qty   int    `json:"qty"`
	Cents int64  `json:"cents"`
}

type report struct {
	Source string     `json:"source"`
	Orders []enriched `json:"orders"`
}

// Handle is the task's Lambda handler: aws-lambda-go decodes the event
// into a Batch and encodes the Summary (lambda.NewHandler(Handle) runs it
// in process as the task does).
func Handle(b Batch) (Summary, error) {
	return Process(&b)
}

// Invoke is one invocation without the Lambda runtime: the event decoded
// into a Batch, Process, and the summary encoded.
func Invoke(event []byte) ([]byte, error) {
	var b Batch
	if err := json.Unmarshal(event, &b); err != nil {
		return nil, fmt.Errorf("event: %w", err)
	}
	s, err := Process(&b)
	if err != nil {
		return nil, err
	}
	return json.Marshal(s)
}

// The entities found in notes. Each pattern starts with a literal where it
// can (regexp then skips to it with a string search); e-mail addresses
// are cut around each '@' and checked whole with emailRE.
var (
	emailRE = regexp.MustCompile(`^[A-Za-z0-9._%+-]+@[A-Za-z0-9.-]+\.[A-Za-z]{2,}$`)
	phoneRE = regexp.MustCompile(`\+\d{1,3} \d{3} \d{3} \d{4}`)
	refREs  = []*regexp.Regexp{
		regexp.MustCompile(`ORD-\d{6}\b`), regexp.MustCompile(`RMA-\d{6}\b`), regexp.MustCompile(`INV-\d{6}\b`),
	}
	urlRE = regexp.MustCompile(`https?://[A-Za-z0-9./_?=&%-]+`)
)

// Process works through a batch.
func Process(b *Batch) (Summary, error) {
	in := newInvocation(&configured)
	s := Summary{Source: b.Source, Orders: len(b.Orders)}
	rep := report{Source: b.Source, Orders: make([]enriched, 0, len(b.Orders))}
	for i := range b.Orders {
		e := in.order(&b.Orders[i])
		if len(e.Flags) > 0 {
			s.Flagged++
		}
		s.Items += len(e.Lines)
		s.Revenue += e.Total
		s.Emails += len(e.Emails)
		s.Phones += len(e.Phones)
		s.Refs += len(e.Refs)
		s.URLs += len(e.URLs)
		rep.Orders = append(rep.Orders, e)
	}
	s.Terms = in.topTerms(10)
	out, err := json.Marshal(rep)
	if err != nil {
		return Summary{}, err
	}
	n, err := gzipped(out)
	if err != nil {
		return Summary{}, err
	}
	sum := sha256.Sum256(out)
	s.Report, s.Gzipped, s.ReportID = len(out), n, hex.EncodeToString(sum[:8])
	return s, nil
}

// invocation is one Process call's state: its pipeline, the terms of all
// its orders so far, and the buffers each order reuses.
type invocation struct {
	p         *pipeline
	all       map[string]int
	counts    map[string]int
	raw, word []byte
	terms     []Term
	notes     strings.Reader
	feat      *features
}

func newInvocation(p *pipeline) *invocation {
	return &invocation{p: p, all: make(map[string]int, 4096), counts: map[string]int{}, feat: newFeatures(p.hash)}
}

// order checks and prices an order, finds the entities in its notes and
// analyses their terms.
func (in *invocation) order(o *Order) enriched {
	e := enriched{ID: o.ID, Customer: o.Customer.Name, Country: o.Customer.Country, Currency: o.Currency}
	for _, c := range in.p.checks {
		if f := c.Check(o); f != "" {
			e.Flags = append(e.Flags, f)
		}
	}
	for j := range o.Items {
		it := &o.Items[j]
		cents := it.Cents * int64(it.Qty)
		for _, r := range in.p.pricing {
			cents = r.Apply(it, o, cents)
		}
		e.Lines = append(e.Lines, line{SKU: it.SKU, Qty: it.Qty, Cents: cents})
		e.Total += cents
	}
	entities(o.Notes, &e)
	in.notes.Reset(o.Notes)
	in.analyse(&in.notes, &e)
	return e
}

// entities finds the e-mail addresses, phone numbers, order references
// and URLs in notes, and quotes the notes' start with the personal ones
// masked.
func entities(notes string, e *enriched) {
	var spans []span
	e.Emails, spans = findEmails(notes, e.Emails, spans)
	e.Phones, spans = find(phoneRE, notes, e.Phones, spans, "[phone]")
	for _, re := range refREs {
		e.Refs, _ = find(re, notes, e.Refs, nil, "")
	}
	if strings.Contains(notes, "http") {
		e.URLs, _ = find(urlRE, notes, e.URLs, nil, "")
	}
	e.Excerpt = excerpt(redact(notes, spans), excerptBytes)
}

// analyse reads the words of notes, normalises them, drops stopwords,
// stems and counts the rest, and scores them; the stems' features give
// the notes' topic.
func (in *invocation) analyse(notes io.RuneReader, e *enriched) {
	p := in.p
	clear(in.counts)
	var topics [numTopics]float64
	in.raw = in.raw[:0]
	for {
		c, _, err := notes.ReadRune()
		if err == nil && p.tok.InWord(c) {
			in.raw = utf8.AppendRune(in.raw, c)
			continue
		}
		if len(in.raw) > 0 {
			in.word = p.norm.Normalize(in.word[:0], in.raw)
			in.raw = in.raw[:0]
			if len(in.word) >= 3 && !p.stop.Skip(in.word) {
				in.word = p.stem.Stem(in.word)
				in.feat.add(p.topics, &topics, in.word)
				in.counts[string(in.word)]++
			}
		}
		if err != nil {
			break
		}
	}
	e.Topic = topicNames[argmax(topics[:])]
	in.terms = in.terms[:0]
	for w, n := range in.counts {
		in.all[w] += n
		in.terms = append(in.terms, Term{Word: w, Count: n, Score: p.score.Score(w, n)})
	}
	slices.SortFunc(in.terms, byScore)
	e.Terms = slices.Clone(in.terms[:min(len(in.terms), 5)])
}

// topTerms are the n best terms of all the orders so far.
func (in *invocation) topTerms(n int) []Term {
	top := make([]Term, 0, len(in.all))
	for w, c := range in.all {
		top = append(top, Term{Word: w, Count: c, Score: in.p.score.Score(w, c)})
	}
	slices.SortFunc(top, byScore)
	return top[:min(len(top), n)]
}

// gzipped is the size of b gzipped (the report a real handler would
// store).
func gzipped(b []byte) (int, error) {
	var gz bytes.Buffer
	zw := gzipWriters.Get().(*gzip.Writer)
	defer gzipWriters.Put(zw)
	zw.Reset(&gz)
	if _, err := zw.Write(b); err != nil {
		return 0, err
	}
	if err := zw.Close(); err != nil {
		return 0, err
	}
	return gz.Len(), nil
}

// gzipWriters keep the compressors between invocations: each holds
// some 600 KB of tables and windows.
var gzipWriters = sync.Pool{New: func() any {
	zw, err := gzip.NewWriterLevel(nil, gzip.BestSpeed)
	if err != nil {
		panic(err) // a valid level
	}
	return zw
}}

// byScore orders terms by score, then count, then word, so that the
// order is the same on every run.
func byScore(a, b Term) int {
	switch {
	case a.Score != b.Score:
		if a.Score > b.Score {
			return -1
		}
		return 1
	case a.Count != b.Count:
		return b.Count - a.Count
	}
	return strings.Compare(a.Word, b.Word)
}

// span is a part of a text to replace.
type span struct {
	start, end int
	with       string
}

// find appends re's matches in s to found and, with a mask, their spans
// to spans.
func find(re *regexp.Regexp, s string, found []string, spans []span, mask string) ([]string, []span) {
	for _, m := range re.FindAllStringIndex(s, -1) {
		found = append(found, s[m[0]:m[1]])
		if mask != "" {
			spans = append(spans, span{m[0], m[1], mask})
		}
	}
	return found, spans
}

// findEmails appends the e-mail addresses in s to found, and their spans
// to spans.
func findEmails(s string, found []string, spans []span) ([]string, []span) {
	for at := 0; ; {
		i := strings.IndexByte(s[at:], '@')
		if i < 0 {
			return found, spans
		}
		i += at
		start, end := i, i+1
		for start > 0 && emailByte(s[start-1]) {
			start--
		}
		for end < len(s) && emailByte(s[end]) {
			end++
		}
		for end > i && s[end-1] == '.' { // a full stop after the address
			end--
		}
		if emailRE.MatchString(s[start:end]) {
			found = append(found, s[start:end])
			spans = append(spans, span{start, end, "[email]"})
		}
		at = end
	}
}

func emailByte(c byte) bool {
	return 'a' <= c && c <= 'z' || 'A' <= c && c <= 'Z' || '0' <= c && c <= '9' || c == '.' || c == '_' || c == '%' || c == '+' || c == '-'
}

// redact replaces the spans of s (which may overlap) with their masks.
func redact(s string, spans []span) string {
	if len(spans) == 0 {
		return s
	}
	slices.SortFunc(spans, func(a, b span) int { return a.start - b.start })
	var b strings.Builder
	b.Grow(len(s))
	at := 0
	for _, sp := range spans {
		if sp.start < at {
			continue
		}
		b.WriteString(s[at:sp.start])
		b.WriteString(sp.with)
		at = sp.end
	}
	b.WriteString(s[at:])
	return b.String()
}

// excerptBytes is about how much of an order's notes the report quotes.
const excerptBytes = 160

// excerpt is s cut at a word boundary after about n bytes.
func excerpt(s string, n int) string {
	if len(s) <= n {
		return s
	}
	if i := strings.IndexByte(s[n:], ' '); i >= 0 {
		return s[:n+i] + " …"
	}
	return s
}

// round3 rounds a score for the report, so that it reads the same
// wherever it was computed.
func round3(x float64) float64 { return math.Round(x*1000) / 1000 }
