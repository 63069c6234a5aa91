package work

import (
	"encoding/json"
	"fmt"
	"math/rand/v2"
	"strings"
)

// Event is the gocpu task's test event: a batch of orders orders
// generated from seed, as JSON. The same arguments give the same bytes;
// DefaultOrders makes it about 220 KB.
func Event(seed uint64, orders int) []byte {
	g := newGenerator(seed)
	b := Batch{Source: fmt.Sprintf("shop-%d", seed%97)}
	for i := range orders {
		b.Orders = append(b.Orders, g.order(i))
	}
	out, err := json.Marshal(b)
	if err != nil {
		panic(err) // plain structs of strings and numbers
	}
	return out
}

// DefaultOrders sizes Event so that one invocation of the task costs
// about 10 ms of CPU on a current x86-64 core.
const DefaultOrders = 60

// stopwords are common English words; the notes are written with them
// and the term scoring skips them.
var stopwords = strings.Fields(`the a an and or but of to in on at for with by from as is was are were be been
it this that these those we you they he she our your their not no so if then than too very can will just`)

// syllables make the notes' vocabulary: pronounceable, and many enough
// that term counts are spread as in real text.
var syllables = strings.Fields(`ka lo mi ne ru sa ti vo pe da gri mon tel bar sen quo fa li dor pan rek ust
ive ber cal ent ion ora ple tra ven xi zu`)

var (
	// countries end with XX, which is none: the country check flags it.
	countries  = []string{"DE", "FR", "GB", "US", "JP", "BR", "IN", "NL", "SE", "ES", "IT", "PL", "XX"}
	currencies = []string{"EUR", "USD", "GBP", "JPY", "BRL", "INR", "SEK", "PLN"}
	categories = []string{"books", "garden", "toys", "food", "tools", "music", "sport", "office"}
	firstNames = []string{"Ada", "Björn", "Chloé", "Dmitri", "Eun-ji", "Farah", "Giulia", "Hiro", "Ines", "José", "Kwame", "Lena"}
	lastNames  = []string{"Okafor", "Müller", "Nakamura", "Silva", "Dubois", "Kowalski", "Svensson", "Rossi", "Patel", "García"}
	tagWords   = []string{"gift", "express", "fragile", "repeat", "b2b", "promo", "wholesale", "eco", "priority"}
)

type generator struct {
	r     *rand.Rand
	vocab []string
	zipf  *rand.Zipf
}

func newGenerator(seed uint64) *generator {
	r := rand.New(rand.NewPCG(seed, seed^0x9e3779b97f4a7c15))
	g := &generator{r: r}
	seen := map[string]bool{}
	for len(g.vocab) < 900 {
		n := 2 + r.IntN(3)
		var w strings.Builder
		for range n {
			w.WriteString(syllables[r.IntN(len(syllables))])
		}
		if !seen[w.String()] {
			seen[w.String()] = true
			g.vocab = append(g.vocab, w.String())
		}
	}
	g.zipf = rand.NewZipf(r, 1.1, 2, uint64(len(g.vocab)-1))
	return g
}

func (g *generator) pick(s []string) string { return s[g.r.IntN(len(s))] }

func (g *generator) order(i int) Order {
	first, last := g.pick(firstNames), g.pick(lastNames)
	o := Order{
		ID: fmt.Sprintf("ORD-%06d", 100000+i*7+g.r.IntN(7)),
		Customer: Customer{
			Name:    first + " " + last,
			Email:   strings.ToLower(asciiOnly(first)) + "." + strings.ToLower(asciiOnly(last)) + "@example.com",
			Phone:   fmt.Sprintf("+%d %03d %03d %04d", 1+g.r.IntN(60), g.r.IntN(1000), g.r.IntN(1000), g.r.IntN(10000)),
			Country: g.pick(countries),
		},
		Currency: g.pick(currencies),
		Created:  fmt.Sprintf("2026-%02d-%02dT%02d:%02d:%02dZ", 1+g.r.IntN(12), 1+g.r.IntN(28), g.r.IntN(24), g.r.IntN(60), g.r.IntN(60)),
	}
	if g.r.IntN(40) == 0 {
		o.Customer.Email = "not-an-address" // the checks flag it
	}
	for range 1 + g.r.IntN(5) {
		o.Items = append(o.Items, Item{
			SKU:      fmt.Sprintf("%s-%05d", strings.ToUpper(g.pick(categories)[:3]), g.r.IntN(100000)),
			Qty:      1 + g.r.IntN(14),
			Cents:    int64(99 + g.r.IntN(25000)),
			Category: g.pick(categories),
		})
	}
	for range g.r.IntN(3) {
		o.Tags = append(o.Tags, g.pick(tagWords))
	}
	o.Notes = g.notes()
	return o
}

// notes is a few sentences of text with, now and then, an e-mail
// address, a phone number, an order reference or a URL in them.
func (g *generator) notes() string {
	var b strings.Builder
	for range 24 + g.r.IntN(24) {
		n := 6 + g.r.IntN(12)
		for j := range n {
			if j > 0 {
				b.WriteByte(' ')
			}
			switch g.r.IntN(60) {
			case 0:
				fmt.Fprintf(&b, "%s.%s@mail%d.example.org", g.vocab[g.zipf.Uint64()], g.vocab[g.r.IntN(len(g.vocab))], g.r.IntN(9))
			case 1:
				fmt.Fprintf(&b, "+%d %03d %03d %04d", 1+g.r.IntN(60), g.r.IntN(1000), g.r.IntN(1000), g.r.IntN(10000))
			case 2:
				fmt.Fprintf(&b, "%s-%06d", g.pick([]string{"ORD", "RMA", "INV"}), g.r.IntN(1000000))
			case 3:
				fmt.Fprintf(&b, "https://shop.example.com/p/%s?ref=%d", g.vocab[g.r.IntN(len(g.vocab))], g.r.IntN(1000))
			default:
				if g.r.IntN(3) == 0 {
					b.WriteString(g.pick(stopwords))
				} else {
					w := g.vocab[g.zipf.Uint64()]
					if j == 0 {
						w = strings.ToUpper(w[:1]) + w[1:]
					}
					b.WriteString(w)
				}
			}
		}
		b.WriteString(g.pick([]string{". ", "! ", "? ", "; "}))
	}
	return strings.TrimSpace(b.String())
}

// asciiOnly drops non-ASCII letters, for e-mail local parts.
func asciiOnly(s string) string {
	return strings.Map(func(r rune) rune {
		if r < 0x80 {
			return r
		}
		return -1
	}, s)
}
