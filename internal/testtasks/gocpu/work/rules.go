package work

import (
	"fmt"
	"regexp"
	"strings"
	"time"
)

// PriceRule adjusts an item's price (in cents, quantity included).
type PriceRule interface {
	Apply(it *Item, o *Order, cents int64) int64
}

// Check finds a problem with an order, or returns "".
type Check interface {
	Check(o *Order) string
}

// Config names the rules a pipeline runs.
type Config struct {
	Tokenizer, Normalizer, Stopper, Stemmer, Hasher, Topics, Scorer string
	Pricing, Checks                                                 []string
}

// DefaultConfig is what the task runs.
var DefaultConfig = Config{
	Tokenizer: "letters", Normalizer: "fold", Stopper: "english", Stemmer: "porter", Hasher: "fnv1a", Topics: "hashed", Scorer: "tfidf",
	Pricing: []string{"bulk", "tax", "fx", "round"},
	Checks:  []string{"required", "email", "country", "currency", "created"},
}

// pipeline is a Config's rules.
type pipeline struct {
	tok     Tokenizer
	norm    Normalizer
	stop    Stopper
	stem    Stemmer
	hash    Hasher
	topics  TopicModel
	score   Scorer
	pricing []PriceRule
	checks  []Check
}

// configured is the pipeline Process runs: DefaultConfig, looked up by
// name when the package starts.
var configured = mustPipeline(DefaultConfig)

// The rules by name.
var (
	tokenizers  = map[string]func() Tokenizer{"letters": func() Tokenizer { return letters{} }, "non-space": func() Tokenizer { return nonSpace{} }}
	normalizers = map[string]func() Normalizer{"fold": func() Normalizer { return foldNormalizer{} }, "none": func() Normalizer { return asIs{} }}
	stoppers    = map[string]func() Stopper{"english": func() Stopper { return newStopSet(stopwords) }, "none": func() Stopper { return newStopSet(nil) }}
	stemmers    = map[string]func() Stemmer{"porter": func() Stemmer { return porter{} }, "none": func() Stemmer { return noStem{} }}
	hashers     = map[string]func() Hasher{"fnv1a": func() Hasher { return fnv1a{} }}
	topicModels = map[string]func() TopicModel{"hashed": func() TopicModel { return newHashedTopics(2463534242) }}
	scorers     = map[string]func() Scorer{"tfidf": func() Scorer { return newTFIDF(1000) }, "count": func() Scorer { return countScore{} }}
	priceRules  = map[string]func() PriceRule{
		"bulk": func() PriceRule { return bulkDiscount{minQty: 10, percent: 5} },
		"tax": func() PriceRule {
			return categoryTax{basisPoints: map[string]int64{"books": 700, "food": 700, "garden": 1900, "toys": 1900, "tools": 1900, "music": 1900, "sport": 1900, "office": 1900}}
		},
		"fx": func() PriceRule {
			return toEUR{ppm: map[string]int64{"EUR": 1e6, "USD": 920000, "GBP": 1170000, "JPY": 6100, "BRL": 170000, "INR": 11000, "SEK": 87000, "PLN": 230000}}
		},
		"round": func() PriceRule { return roundTo{cents: 5} },
	}
	checks = map[string]func() Check{
		"required": func() Check { return required{} },
		"email": func() Check {
			return emailCheck{re: regexp.MustCompile(`^[A-Za-z0-9._%+-]+@[A-Za-z0-9.-]+\.[A-Za-z]{2,}$`)}
		},
		"country": func() Check {
			return oneOf{field: "country", get: func(o *Order) string { return o.Customer.Country }, set: set(countries[:len(countries)-1])}
		},
		"currency": func() Check {
			return oneOf{field: "currency", get: func(o *Order) string { return o.Currency }, set: set(currencies)}
		},
		"created": func() Check { return createdCheck{} },
	}
)

func mustPipeline(c Config) pipeline {
	p, err := newPipeline(c)
	if err != nil {
		panic(err)
	}
	return p
}

func newPipeline(c Config) (pipeline, error) {
	var p pipeline
	var err error
	if p.tok, err = lookup(tokenizers, "tokenizer", c.Tokenizer); err != nil {
		return p, err
	}
	if p.norm, err = lookup(normalizers, "normalizer", c.Normalizer); err != nil {
		return p, err
	}
	if p.stop, err = lookup(stoppers, "stopper", c.Stopper); err != nil {
		return p, err
	}
	if p.stem, err = lookup(stemmers, "stemmer", c.Stemmer); err != nil {
		return p, err
	}
	if p.hash, err = lookup(hashers, "hasher", c.Hasher); err != nil {
		return p, err
	}
	if p.topics, err = lookup(topicModels, "topic model", c.Topics); err != nil {
		return p, err
	}
	if p.score, err = lookup(scorers, "scorer", c.Scorer); err != nil {
		return p, err
	}
	for _, n := range c.Pricing {
		r, err := lookup(priceRules, "price rule", n)
		if err != nil {
			return p, err
		}
		p.pricing = append(p.pricing, r)
	}
	for _, n := range c.Checks {
		r, err := lookup(checks, "check", n)
		if err != nil {
			return p, err
		}
		p.checks = append(p.checks, r)
	}
	return p, nil
}

func lookup[T any](m map[string]func() T, what, name string) (T, error) {
	f, ok := m[name]
	if !ok {
		var zero T
		return zero, fmt.Errorf("unknown %s %q", what, name)
	}
	return f(), nil
}

func set(s []string) map[string]bool {
	m := map[string]bool{}
	for _, v := range s {
		m[v] = true
	}
	return m
}

type bulkDiscount struct{ minQty, percent int64 }

func (b bulkDiscount) Apply(it *Item, _ *Order, cents int64) int64 {
	if int64(it.Qty) >= b.minQty {
		return cents - cents*b.percent/100
	}
	return cents
}

type categoryTax struct{ basisPoints map[string]int64 }

func (t categoryTax) Apply(it *Item, _ *Order, cents int64) int64 {
	return cents + cents*t.basisPoints[it.Category]/10000
}

type toEUR struct{ ppm map[string]int64 }

func (f toEUR) Apply(_ *Item, o *Order, cents int64) int64 {
	rate, ok := f.ppm[o.Currency]
	if !ok {
		return cents
	}
	return cents * rate / 1e6
}

type roundTo struct{ cents int64 }

func (r roundTo) Apply(_ *Item, _ *Order, cents int64) int64 {
	return (cents + r.cents/2) / r.cents * r.cents
}

type required struct{}

func (required) Check(o *Order) string {
	switch {
	case o.ID == "":
		return "no id"
	case o.Customer.Name == "":
		return "no customer"
	case len(o.Items) == 0:
		return "no items"
	}
	return ""
}

type emailCheck struct{ re *regexp.Regexp }

func (c emailCheck) Check(o *Order) string {
	if !c.re.MatchString(o.Customer.Email) {
		return "bad email " + o.Customer.Email
	}
	return ""
}

type oneOf struct {
	field string
	get   func(*Order) string
	set   map[string]bool
}

func (c oneOf) Check(o *Order) string {
	if v := c.get(o); !c.set[v] {
		return "unknown " + c.field + " " + v
	}
	return ""
}

type createdCheck struct{}

func (createdCheck) Check(o *Order) string {
	if _, err := time.Parse(time.RFC3339, o.Created); err != nil {
		return "bad created time " + strings.TrimSpace(o.Created)
	}
	return ""
}
