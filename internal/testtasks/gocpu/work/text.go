package work

import (
	"math"
	"unicode"
	"unicode/utf8"
)

// Tokenizer says which runes make up words.
type Tokenizer interface {
	InWord(r rune) bool
}

// Normalizer puts a word in the form terms are counted in.
type Normalizer interface {
	Normalize(dst, word []byte) []byte
}

// Stopper says which normalised words are not terms.
type Stopper interface {
	Skip(word []byte) bool
}

// Scorer weighs a term that occurs n times in a text.
type Scorer interface {
	Score(word string, n int) float64
}

// letters puts letters and digits in words.
type letters struct{}

func (letters) InWord(r rune) bool {
	if r < utf8.RuneSelf {
		return 'a' <= r && r <= 'z' || 'A' <= r && r <= 'Z' || '0' <= r && r <= '9'
	}
	return unicode.IsLetter(r) || unicode.IsDigit(r)
}

// nonSpace puts everything but white space in words.
type nonSpace struct{}

func (nonSpace) InWord(r rune) bool { return !unicode.IsSpace(r) }

// foldNormalizer lower-cases a word.
type foldNormalizer struct{}

func (foldNormalizer) Normalize(dst, w []byte) []byte {
	for i := 0; i < len(w); {
		c := w[i]
		if c < utf8.RuneSelf {
			if 'A' <= c && c <= 'Z' {
				c += 'a' - 'A'
			}
			dst = append(dst, c)
			i++
			continue
		}
		r, n := utf8.DecodeRune(w[i:])
		dst = utf8.AppendRune(dst, unicode.ToLower(r))
		i += n
	}
	return dst
}

type asIs struct{}

func (asIs) Normalize(dst, w []byte) []byte { return append(dst, w...) }

// stopSet skips the words in it.
type stopSet struct{ m map[string]struct{} }

func newStopSet(words []string) stopSet {
	s := stopSet{m: map[string]struct{}{}}
	for _, w := range words {
		s.m[w] = struct{}{}
	}
	return s
}

func (s stopSet) Skip(w []byte) bool {
	_, ok := s.m[string(w)]
	return ok
}

// tfidf weighs a term by its count and an inverse document frequency,
// looked up by the word's hash in a table (a stand-in for a corpus's).
type tfidf struct{ idf *[64]float64 }

func newTFIDF(docs float64) tfidf {
	var t [64]float64
	for df := range t {
		t[df] = math.Log(docs / float64(1+df))
	}
	return tfidf{&t}
}

func (t tfidf) Score(w string, n int) float64 {
	return round3(float64(n) * (1 + float64(len(w))/16) * t.idf[fnv32(w)%64])
}

func fnv32(s string) uint32 {
	h := uint32(2166136261)
	for i := 0; i < len(s); i++ {
		h ^= uint32(s[i])
		h *= 16777619
	}
	return h
}

type countScore struct{}

func (countScore) Score(_ string, n int) float64 { return float64(n) }

// Stemmer reduces a normalised word to its stem, in place.
type Stemmer interface {
	Stem(word []byte) []byte
}

// TopicModel adds a feature's weight for each topic to scores.
type TopicModel interface {
	Add(scores *[numTopics]float64, feature uint32)
}

// porter is the first steps of Porter's stemmer (plurals, -ed and -ing,
// -y, and the common derivational suffixes), the part that does most of
// the work on English text.
type porter struct{}

func (porter) Stem(w []byte) []byte {
	if len(w) <= 2 {
		return w
	}
	w = step1a(w)
	w = step1b(w)
	if hasSuffix(w, "y") && hasVowel(w[:len(w)-1]) {
		w[len(w)-1] = 'i'
	}
	w = step2(w)
	if hasSuffix(w, "e") {
		if m := measure(w[:len(w)-1]); m > 1 || m == 1 && !cvc(w[:len(w)-1]) {
			w = w[:len(w)-1]
		}
	}
	return w
}

func step1a(w []byte) []byte {
	switch {
	case hasSuffix(w, "sses"), hasSuffix(w, "ies"):
		return w[:len(w)-2]
	case hasSuffix(w, "ss"):
		return w
	case hasSuffix(w, "s"):
		return w[:len(w)-1]
	}
	return w
}

func step1b(w []byte) []byte {
	if hasSuffix(w, "eed") {
		if measure(w[:len(w)-3]) > 0 {
			return w[:len(w)-1]
		}
		return w
	}
	for _, s := range [...]string{"ed", "ing"} {
		if hasSuffix(w, s) && hasVowel(w[:len(w)-len(s)]) {
			w = w[:len(w)-len(s)]
			switch {
			case hasSuffix(w, "at"), hasSuffix(w, "bl"), hasSuffix(w, "iz"):
				return append(w, 'e')
			case doubleConsonant(w) && !hasSuffix(w, "l") && !hasSuffix(w, "s") && !hasSuffix(w, "z"):
				return w[:len(w)-1]
			case measure(w) == 1 && cvc(w):
				return append(w, 'e')
			}
			return w
		}
	}
	return w
}

// step2Suffixes are Porter's step 2 and 3 suffixes and what replaces each.
var step2Suffixes = [...][2]string{
	{"ational", "ate"}, {"tional", "tion"}, {"enci", "ence"}, {"anci", "ance"}, {"izer", "ize"},
	{"abli", "able"}, {"alli", "al"}, {"entli", "ent"}, {"eli", "e"}, {"ousli", "ous"},
	{"ization", "ize"}, {"ation", "ate"}, {"ator", "ate"}, {"alism", "al"}, {"iveness", "ive"},
	{"fulness", "ful"}, {"ousness", "ous"}, {"aliti", "al"}, {"iviti", "ive"}, {"biliti", "ble"},
	{"icate", "ic"}, {"ative", ""}, {"alize", "al"}, {"iciti", "ic"}, {"ical", "ic"}, {"ful", ""}, {"ness", ""},
}

// step2ByLast are step2Suffixes by their last letter, so that a word is
// checked only against the suffixes it may end with.
var step2ByLast = func() (t [256][][2]string) {
	for _, r := range step2Suffixes {
		last := r[0][len(r[0])-1]
		t[last] = append(t[last], r)
	}
	return t
}()

func step2(w []byte) []byte {
	for _, r := range step2ByLast[w[len(w)-1]] {
		if hasSuffix(w, r[0]) {
			stem := w[:len(w)-len(r[0])]
			if measure(stem) > 0 {
				return append(stem, r[1]...)
			}
			return w
		}
	}
	return w
}

func hasSuffix(w []byte, s string) bool {
	return len(w) >= len(s) && string(w[len(w)-len(s):]) == s
}

// consonant reports whether w[i] is a consonant in Porter's sense: not a
// vowel, and y only after a vowel.
func consonant(w []byte, i int) bool {
	switch w[i] {
	case 'a', 'e', 'i', 'o', 'u':
		return false
	case 'y':
		return i == 0 || !consonant(w, i-1)
	}
	return true
}

func hasVowel(w []byte) bool {
	for i := range w {
		if !consonant(w, i) {
			return true
		}
	}
	return false
}

// measure is the number of vowel-consonant sequences in w.
func measure(w []byte) int {
	m, i := 0, 0
	for i < len(w) && consonant(w, i) {
		i++
	}
	for i < len(w) {
		for i < len(w) && !consonant(w, i) {
			i++
		}
		if i == len(w) {
			break
		}
		for i < len(w) && consonant(w, i) {
			i++
		}
		m++
	}
	return m
}

func doubleConsonant(w []byte) bool {
	n := len(w)
	return n >= 2 && w[n-1] == w[n-2] && consonant(w, n-1)
}

// cvc: w ends consonant-vowel-consonant, the last not w, x or y.
func cvc(w []byte) bool {
	n := len(w)
	if n < 3 || !consonant(w, n-1) || consonant(w, n-2) || !consonant(w, n-3) {
		return false
	}
	c := w[n-1]
	return c != 'w' && c != 'x' && c != 'y'
}

type noStem struct{}

func (noStem) Stem(w []byte) []byte { return w }

// Topics an order's notes are sorted into.
const numTopics = 4

var topicNames = [numTopics]string{"delivery", "billing", "product", "other"}

// Hasher hashes a feature.
type Hasher interface {
	Sum32(b []byte) uint32
}

// fnv1a is the 32-bit FNV-1a hash.
type fnv1a struct{}

func (fnv1a) Sum32(b []byte) uint32 {
	h := uint32(2166136261)
	for _, c := range b {
		h ^= uint32(c)
		h *= 16777619
	}
	return h
}

// features hashes a stem's character trigrams (with the word's
// boundaries marked, as fastText's subword features are) for a topic
// model. Each invocation has its own: it keeps a buffer.
type features struct {
	hash Hasher
	gram []byte
}

func newFeatures(h Hasher) *features { return &features{hash: h} }

// add adds the weights of stem's features in m to scores.
func (f *features) add(m TopicModel, scores *[numTopics]float64, stem []byte) {
	f.gram = append(append(append(f.gram[:0], '<'), stem...), '>')
	for i := 0; i+3 <= len(f.gram); i++ {
		m.Add(scores, f.hash.Sum32(f.gram[i:i+3]))
	}
}

// topicBuckets is the size of each topic's table of feature weights (a
// power of two): 1,024 features, 16 KB for the four topics.
const topicBuckets = 1 << 10

// hashedTopics is a linear classifier over hashed features: a table of
// weights per topic, indexed by the feature's hash.
type hashedTopics struct {
	// weights[f][t] is feature f's weight for topic t: a feature's
	// weights share a cache line.
	weights *[topicBuckets][numTopics]float32
}

func newHashedTopics(seed uint32) hashedTopics {
	var w [topicBuckets][numTopics]float32
	x := seed
	for t := range numTopics {
		for f := range w {
			x ^= x << 13
			x ^= x >> 17
			x ^= x << 5
			w[f][t] = float32(int32(x%2001)-1000) / 1000
		}
	}
	return hashedTopics{weights: &w}
}

func (h hashedTopics) Add(scores *[numTopics]float64, feature uint32) {
	w := &h.weights[feature&(topicBuckets-1)]
	for t := range scores {
		scores[t] += float64(w[t])
	}
}

func argmax(x []float64) int {
	best := 0
	for i, v := range x {
		if v > x[best] {
			best = i
		}
	}
	return best
}
