/*
 * The echo guest's user half: a virtio-vsock driver and the guest agent's
 * framing, at CPL 3, polling (interrupts only wake it from sleep).
 *
 * It finds the virtio-vsock device on the virtio-mmio bus (the command
 * line's virtio_mmio.device= entries, else a probe of Kindling's windows),
 * connects to the host (CID 2) on port 1024 and answers the host's frames
 * (agent/guest/protocol.go: u32 BE header length, JSON header, u32 BE body
 * length, body): "hello" with "ready", "invoke" with a "response" carrying
 * the same id and body, or, for the body {"op":"random"}, 16 hex digits
 * drawn from the TSC and the hello's entropy seed. The bodies
 * {"op":"flood-logs"} and {"op":"flood-garbage"} are bad guests, for the
 * host's defences: never a response, but log frames as fast as the host's
 * credit allows, or a frame head declaring a 4 GiB body and then garbage,
 * until the connection ends. When the connection ends (the host closed
 * it, or a transport-reset event after a snapshot restore) it connects
 * again, a good guest once more.
 *
 * It models a task with SnapStart hooks, for warm snapshots. It keeps a
 * log of its last EVENTS events: "invoke:<id>" for every invocation,
 * "before-snapshot" when it answers a "checkpoint" frame (with a
 * "checkpoint" frame, empty body: the snapshot may be cut now), and
 * "after-restore" when it answers the first hello after that checkpoint,
 * the hello of a VM restored from the snapshot, with "restored" instead of
 * "ready". The body {"op":"events"} answers the log, oldest first, one
 * event a line; {"op":"hang-checkpoint"} answers "ok" and makes every
 * later checkpoint frame go unanswered (a before-snapshot hook that
 * hangs), while invocations are still answered.
 *
 * Everything here runs at native speed where guest kernel mode is
 * emulated. It polls the used rings; after a while with nothing to do it
 * executes HLT, which traps to entry.S and sleeps until the device's
 * interrupt or the next LAPIC timer tick, so an idle guest costs the host
 * nothing. Command-line switches: echoguest.debug (log connection events
 * on COM1), echoguest.poll (never sleep), echoguest.port=N (host port).
 */

#include <stddef.h>
#include <stdint.h>

typedef uint8_t u8;
typedef uint16_t u16;
typedef uint32_t u32;
typedef uint64_t u64;

/* ---- Shared with entry.S ---- */

volatile u8 irq_seen; /* set by every interrupt; cleared by idle() */
volatile u32 ticks;   /* LAPIC timer interrupts, TICKS_PER_SEC a second */

/* ---- Limits and constants ---- */

/* The agent protocol's limits (agent/guest/protocol.go). */
#define MAX_HEADER (64u << 10)
#define MAX_BODY (6u << 20)
/* inbuf holds the host's stream until whole frames are answered; it is
 * also the receive buffer advertised to the device (buf_alloc), so the
 * largest frame always fits. */
#define INBUF_SIZE (8u << 20)
/* Tell the host about consumed bytes at least this often. */
#define CREDIT_BATCH (64u << 10)
/* The device refuses packets above 64 KiB (vsock.go maxPayload). */
#define MAX_PACKET (64u << 10)
/* Flood modes: each log line's body (well under the protocol's 1 MiB
 * MaxLogLine: many small frames are the host's hardest case per byte),
 * the body length the garbage frame declares (above MAX_BODY, and larger
 * than any host should allocate), and floodbuf, sent again and again:
 * FLOOD_FRAMES log frames (one packet, one VM exit), or garbage. */
#define FLOOD_LINE 1000
#define FLOOD_FRAMES 60
#define FLOOD_DECLARED 0xfffffff0u
#define FLOOD_BUF (62u << 10)
_Static_assert(FLOOD_FRAMES * (FLOOD_LINE + 8 + 32) <= FLOOD_BUF && FLOOD_BUF <= MAX_PACKET,
	       "the log frames fit floodbuf, and floodbuf one packet");

#define HOST_CID 2
#define DEFAULT_PORT 1024
#define FIRST_LOCAL_PORT 0x8000

/* TSC cycles with nothing to do before sleeping: 1 to 3 ms at today's
 * clock rates, longer than the host takes to send the next request of a
 * burst (sleeping and waking costs about 150 us more than polling). */
#define IDLE_CYCLES 5000000ull
/* The LAPIC timer: KVM's APIC clock is 1 GHz; 50 ms a tick. */
#define TICK_COUNT 50000000u
#define TICKS_PER_SEC 20
#define CONNECT_TIMEOUT_TICKS (2 * TICKS_PER_SEC)
/* Refused connections are retried after 1, 2, 4, 8, then every 10 ticks
 * (kindling-init backs off to 1 s; kindlingd waits 5 s for a redial). */
#define MAX_BACKOFF_TICKS 10

/* Interrupt vectors (entry.S knows them too). */
#define VEC_VIRTIO 0x30
#define VEC_TIMER 0x31
#define VEC_SPURIOUS 0x3f

#define COM1 0x3f8
#define IOAPIC 0xfec00000ul
#define LAPIC 0xfee00000ul

/* virtio-mmio (virtio 1.2, 4.2.2). */
#define VIRTIO_MAGIC 0x74726976
#define VIRTIO_VERSION 2
#define VIRTIO_ID_VSOCK 19
#define R_MAGIC 0x000
#define R_VERSION 0x004
#define R_DEVICE_ID 0x008
#define R_DEV_FEATURES 0x010
#define R_DEV_FEATURES_SEL 0x014
#define R_DRV_FEATURES 0x020
#define R_DRV_FEATURES_SEL 0x024
#define R_QUEUE_SEL 0x030
#define R_QUEUE_NUM_MAX 0x034
#define R_QUEUE_NUM 0x038
#define R_QUEUE_READY 0x044
#define R_QUEUE_NOTIFY 0x050
#define R_INTERRUPT_STATUS 0x060
#define R_INTERRUPT_ACK 0x064
#define R_STATUS 0x070
#define R_QUEUE_DESC_LO 0x080
#define R_QUEUE_DESC_HI 0x084
#define R_QUEUE_DRIVER_LO 0x090
#define R_QUEUE_DRIVER_HI 0x094
#define R_QUEUE_DEVICE_LO 0x0a0
#define R_QUEUE_DEVICE_HI 0x0a4
#define R_CONFIG 0x100
#define S_ACKNOWLEDGE 1
#define S_DRIVER 2
#define S_DRIVER_OK 4
#define S_FEATURES_OK 8
#define S_NEEDS_RESET 0x40
#define INT_CONFIG 2
#define F_VERSION_1_HI 1 /* bit 32: bit 0 of the high word */
#define DESC_F_NEXT 1
#define DESC_F_WRITE 2
#define AVAIL_F_NO_INTERRUPT 1

/* virtio-vsock (virtio 1.2, 5.10). */
#define VQ_RX 0
#define VQ_TX 1
#define VQ_EVENT 2
#define TYPE_STREAM 1
#define OP_REQUEST 1
#define OP_RESPONSE 2
#define OP_RST 3
#define OP_SHUTDOWN 4
#define OP_RW 5
#define OP_CREDIT_UPDATE 6
#define OP_CREDIT_REQUEST 7
#define EVENT_TRANSPORT_RESET 0

struct vsock_hdr {
	u64 src_cid, dst_cid;
	u32 src_port, dst_port;
	u32 len;
	u16 type, op;
	u32 flags;
	u32 buf_alloc, fwd_cnt;
} __attribute__((packed));
#define HDR_SIZE 44
_Static_assert(sizeof(struct vsock_hdr) == HDR_SIZE, "virtio_vsock_hdr is 44 bytes");

/* ---- Split virtqueues (virtio 1.2, 2.7) ---- */

struct desc {
	u64 addr;
	u32 len;
	u16 flags, next;
};

#define RX_SIZE 64    /* receive buffers */
#define RX_BUF 8192   /* each: a header and up to 8148 bytes of data */
#define TX_SIZE 64    /* descriptors: 32 two-part packets */
#define TX_SLOTS (TX_SIZE / 2)
#define EV_SIZE 4

#define QUEUE(n)                                  \
	struct {                                  \
		struct desc desc[n];              \
		struct {                          \
			u16 flags, idx, ring[n], used_event; \
		} __attribute__((aligned(4096))) avail; \
		struct {                          \
			u16 flags, idx;           \
			struct {                  \
				u32 id, len;      \
			} ring[n];                \
			u16 avail_event;          \
		} __attribute__((aligned(4096))) used; \
	} __attribute__((aligned(4096)))

static QUEUE(RX_SIZE) rxq;
static QUEUE(TX_SIZE) txq;
static QUEUE(EV_SIZE) evq;

/* The driver's view of one queue. */
struct vq {
	struct desc *desc;
	volatile u16 *avail_flags, *avail_idx, *avail_ring;
	volatile u16 *used_idx;
	volatile u32 *used_ring; /* id, len pairs */
	u16 size, next_avail, last_used;
};

static struct vq rx, tx, ev;
static u8 rxbufs[RX_SIZE][RX_BUF] __attribute__((aligned(4096)));
static struct vsock_hdr txhdrs[TX_SLOTS];
static u32 evbufs[EV_SIZE][2];

/* ---- Connection state ---- */

enum { IDLE, CONNECTING, CONNECTED };

static struct {
	int state;
	u32 port, next_port, host_port;
	u32 retry_at, backoff, since;
	/* Our stream to the host, under its credit. */
	u32 tx_cnt, peer_buf_alloc, peer_fwd_cnt, credit_asked;
	/* The host's stream to us: consumed bytes and what the host knows. */
	u32 fwd_cnt, told;
} conn;

static u8 inbuf[INBUF_SIZE] __attribute__((aligned(4096)));
static u32 inlen;

/* The answer being sent: up to two parts (frame head, body), then the
 * frame it answers is consumed. */
static struct {
	int active;
	const u8 *part[2];
	u32 len[2];
	int cur;
	u32 off;
	u32 consume;
} out;
static u8 outhead[MAX_HEADER + 64];
static u8 rndbody[16];

/* A flood (FloodLogsOp, FloodGarbageOp) lasts as long as its connection:
 * pump sends its frames whenever the answer before is out. */
enum { FLOOD_NONE, FLOOD_LOGS, FLOOD_GARBAGE_HEAD, FLOOD_GARBAGE_BYTES };
static int flood;
static u8 floodbuf[FLOOD_BUF];
static u32 floodlen;

static uintptr_t vsock;   /* the device's MMIO window */
static u32 vsock_irq;     /* its IOAPIC pin, or ~0 */
static u64 guest_cid;
static int debug, poll_only;
static u64 seed;
static u64 rnd_count;

/* The event log (EventsOp): a ring of the last EVENTS events, each at
 * most EVENT_MAX bytes ("invoke:" and the id, truncated to fit); the
 * numbers and names are echoguest.go's MaxEvents, MaxEventBytes and
 * Event constants. */
#define EVENTS 32
#define EVENT_MAX 48u
#define EVENT_INVOKE "invoke:"
#define EVENT_BEFORE_SNAPSHOT "before-snapshot"
#define EVENT_AFTER_RESTORE "after-restore"
static struct event {
	u8 len;
	u8 text[EVENT_MAX];
} events[EVENTS];
_Static_assert(EVENT_MAX < 256, "an event's length fits its u8");
static u32 nevents; /* logged since boot; the ring holds the last EVENTS */
static u8 evbody[EVENTS * (EVENT_MAX + 1)];
/* checkpointed: a checkpoint was answered and no hello since, so the next
 * hello is a restored VM's (or, if the host never cut the snapshot, the
 * original's: its after-restore hooks run all the same, as CRaC's do
 * after a failed checkpoint). hang_checkpoint: HangCheckpointOp came. */
static int checkpointed, hang_checkpoint;

/* ---- Machine access ---- */

static inline void outb(u16 port, u8 v) { __asm__ volatile("outb %0, %1" ::"a"(v), "Nd"(port)); }
static inline u32 rd32(uintptr_t a) { return *(volatile u32 *)a; }
static inline void wr32(uintptr_t a, u32 v) { *(volatile u32 *)a = v; }
static inline void barrier(void) { __asm__ volatile("" ::: "memory"); }
static inline void fence(void) { __asm__ volatile("mfence" ::: "memory"); }
static inline void relax(void) { __asm__ volatile("pause" ::: "memory"); }
static inline u64 rdtsc(void)
{
	u32 lo, hi;
	__asm__ volatile("rdtsc" : "=a"(lo), "=d"(hi));
	return (u64)hi << 32 | lo;
}
/* HLT at CPL 3 traps to entry.S, which sleeps until an interrupt. */
static inline void sleep_trap(void) { __asm__ volatile("hlt" ::: "memory"); }

void *memcpy(void *d, const void *s, size_t n)
{
	void *ret = d;
	__asm__ volatile("rep movsb" : "+D"(d), "+S"(s), "+c"(n) : : "memory");
	return ret;
}

void *memmove(void *d, const void *s, size_t n)
{
	if ((uintptr_t)d <= (uintptr_t)s || (uintptr_t)d >= (uintptr_t)s + n)
		return memcpy(d, s, n);
	void *ret = d;
	d = (u8 *)d + n - 1;
	s = (const u8 *)s + n - 1;
	__asm__ volatile("std; rep movsb; cld" : "+D"(d), "+S"(s), "+c"(n) : : "memory");
	return ret;
}

void *memset(void *d, int c, size_t n)
{
	void *ret = d;
	__asm__ volatile("rep stosb" : "+D"(d), "+c"(n) : "a"(c) : "memory");
	return ret;
}

/* ---- COM1 logging (each byte is a VM exit: keep it short) ---- */

static void puts_(const char *s)
{
	while (*s)
		outb(COM1, (u8)*s++);
}

static void puthex(u64 v)
{
	char b[19] = "0x";
	int n = 0;
	for (u64 t = v; t; t >>= 4)
		n++;
	if (n == 0)
		n = 1;
	for (int i = 0; i < n; i++)
		b[2 + i] = "0123456789abcdef"[(v >> (4 * (n - 1 - i))) & 0xf];
	b[2 + n] = 0;
	puts_(b);
}

static void putdec(u64 v)
{
	char b[21];
	int i = 20;
	b[i] = 0;
	do {
		b[--i] = (char)('0' + v % 10);
		v /= 10;
	} while (v);
	puts_(b + i);
}

#define LOG(s) puts_("echoguest: " s "\n")
#define DEBUG(s)          \
	do {              \
		if (debug)  \
			LOG(s); \
	} while (0)

/* ---- Small helpers ---- */

static u32 be32(const u8 *p) { return (u32)p[0] << 24 | (u32)p[1] << 16 | (u32)p[2] << 8 | p[3]; }

static void put_be32(u8 *p, u32 v)
{
	p[0] = (u8)(v >> 24);
	p[1] = (u8)(v >> 16);
	p[2] = (u8)(v >> 8);
	p[3] = (u8)v;
}

static int starts(const char *s, const char *prefix, const char **rest)
{
	while (*prefix)
		if (*s++ != *prefix++)
			return 0;
	*rest = s;
	return 1;
}

/* parse_num reads a decimal or 0x-hex number, with a K/M/G suffix if
 * suffix is set (the kernel's memparse). */
static int parse_num(const char **sp, u64 *v, int suffix)
{
	const char *s = *sp;
	u64 n = 0;
	int digits = 0;
	if (s[0] == '0' && (s[1] == 'x' || s[1] == 'X')) {
		s += 2;
		for (;; s++, digits++) {
			char c = *s;
			if (c >= '0' && c <= '9')
				n = n << 4 | (u64)(c - '0');
			else if (c >= 'a' && c <= 'f')
				n = n << 4 | (u64)(c - 'a' + 10);
			else if (c >= 'A' && c <= 'F')
				n = n << 4 | (u64)(c - 'A' + 10);
			else
				break;
		}
	} else {
		for (; *s >= '0' && *s <= '9'; s++, digits++)
			n = n * 10 + (u64)(*s - '0');
	}
	if (!digits)
		return 0;
	if (suffix) {
		switch (*s) {
		case 'K': case 'k': n <<= 10; s++; break;
		case 'M': case 'm': n <<= 20; s++; break;
		case 'G': case 'g': n <<= 30; s++; break;
		}
	}
	*sp = s;
	*v = n;
	return 1;
}

static u64 mix64(u64 z)
{
	z += 0x9e3779b97f4a7c15ull;
	z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ull;
	z = (z ^ (z >> 27)) * 0x94d049bb133111ebull;
	return z ^ (z >> 31);
}

/* ---- Minimal JSON: string values of a top-level object's keys ---- */

static u32 skip_ws(const u8 *j, u32 n, u32 i)
{
	while (i < n && (j[i] == ' ' || j[i] == '\t' || j[i] == '\n' || j[i] == '\r'))
		i++;
	return i;
}

/* skip_string: j[i] is the opening quote; returns the index past the
 * closing one, or n. */
static u32 skip_string(const u8 *j, u32 n, u32 i)
{
	for (i++; i < n; i++) {
		if (j[i] == '\\')
			i++;
		else if (j[i] == '"')
			return i + 1;
	}
	return n;
}

/* skip_value skips one value of any kind starting at j[i]. */
static u32 skip_value(const u8 *j, u32 n, u32 i)
{
	if (i >= n)
		return n;
	if (j[i] == '"')
		return skip_string(j, n, i);
	if (j[i] == '{' || j[i] == '[') {
		u32 depth = 0;
		while (i < n) {
			u8 c = j[i];
			if (c == '"') {
				i = skip_string(j, n, i);
				continue;
			}
			if (c == '{' || c == '[')
				depth++;
			else if ((c == '}' || c == ']') && --depth == 0)
				return i + 1;
			i++;
		}
		return n;
	}
	while (i < n && j[i] != ',' && j[i] != '}' && j[i] != ']' && j[i] != ' ' && j[i] != '\n' && j[i] != '\t' && j[i] != '\r')
		i++;
	return i;
}

/* json_string finds key in the top-level object j and, if its value is a
 * string, returns its raw contents (escapes left as they are, which keeps
 * them valid inside another JSON string). */
static int json_string(const u8 *j, u32 n, const char *key, const u8 **val, u32 *vlen)
{
	u32 i = skip_ws(j, n, 0);
	if (i >= n || j[i] != '{')
		return 0;
	i++;
	for (;;) {
		i = skip_ws(j, n, i);
		if (i >= n || j[i] != '"')
			return 0;
		u32 ks = i + 1, ke = skip_string(j, n, i);
		if (ke >= n)
			return 0;
		i = skip_ws(j, n, ke);
		if (i >= n || j[i] != ':')
			return 0;
		i = skip_ws(j, n, i + 1);
		int match = 1;
		u32 k = ks;
		const char *p = key;
		for (; *p && k < ke - 1; p++, k++)
			if (j[k] != (u8)*p)
				match = 0;
		if (*p || k != ke - 1)
			match = 0;
		if (match && i < n && j[i] == '"') {
			u32 ve = skip_string(j, n, i);
			if (ve > n || j[ve - 1] != '"' || ve - 1 <= i)
				return 0;
			*val = j + i + 1;
			*vlen = ve - i - 2;
			return 1;
		}
		i = skip_ws(j, n, skip_value(j, n, i));
		if (i >= n || j[i] != ',')
			return 0;
		i++;
	}
}

static int is(const u8 *s, u32 n, const char *lit)
{
	u32 i = 0;
	for (; lit[i]; i++)
		if (i >= n || s[i] != (u8)lit[i])
			return 0;
	return i == n;
}

/* ---- The event log ---- */

static int hex4(const u8 *s, u32 *v)
{
	u32 n = 0;
	for (int i = 0; i < 4; i++) {
		u8 c = s[i];
		if (c >= '0' && c <= '9')
			n = n << 4 | (u32)(c - '0');
		else if (c >= 'a' && c <= 'f')
			n = n << 4 | (u32)(c - 'a' + 10);
		else if (c >= 'A' && c <= 'F')
			n = n << 4 | (u32)(c - 'A' + 10);
		else
			return 0;
	}
	*v = n;
	return 1;
}

/* unescape_unit decodes the character at s[*i] of a JSON string's raw
 * contents s[0..n) into u (1 to 4 bytes of UTF-8, returned) and advances
 * *i past it. Malformed escapes become U+FFFD, control characters '?'
 * (an event is one line), stray bytes pass as they are. */
static u32 unescape_unit(const u8 *s, u32 n, u32 *i, u8 u[4])
{
	u8 c = s[(*i)++];
	u32 cp;
	if (c != '\\') {
		u32 len = c < 0xc0 ? 1 : c < 0xe0 ? 2 : c < 0xf0 ? 3 : 4;
		if (len > n - (*i - 1))
			len = 1;
		u[0] = c < 0x20 ? '?' : c;
		for (u32 k = 1; k < len; k++)
			u[k] = s[(*i)++];
		return len;
	}
	if (*i >= n) {
		u[0] = '\\';
		return 1;
	}
	c = s[(*i)++];
	switch (c) {
	case 'b': case 'f': case 'n': case 'r': case 't':
		u[0] = '?';
		return 1;
	case 'u':
		if (n - *i < 4 || !hex4(s + *i, &cp)) {
			cp = 0xfffd;
			break;
		}
		*i += 4;
		if (cp >= 0xd800 && cp < 0xdc00) {
			u32 lo;
			if (n - *i >= 6 && s[*i] == '\\' && s[*i + 1] == 'u' && hex4(s + *i + 2, &lo) && lo >= 0xdc00 && lo < 0xe000) {
				*i += 6;
				cp = 0x10000 + ((cp - 0xd800) << 10) + (lo - 0xdc00);
			} else {
				cp = 0xfffd;
			}
		} else if (cp >= 0xdc00 && cp < 0xe000) {
			cp = 0xfffd;
		}
		break;
	default: /* \" \\ \/, and anything else as itself */
		u[0] = c;
		return 1;
	}
	if (cp < 0x20) {
		u[0] = '?';
		return 1;
	}
	if (cp < 0x80) {
		u[0] = (u8)cp;
		return 1;
	}
	if (cp < 0x800) {
		u[0] = (u8)(0xc0 | cp >> 6);
		u[1] = (u8)(0x80 | (cp & 0x3f));
		return 2;
	}
	if (cp < 0x10000) {
		u[0] = (u8)(0xe0 | cp >> 12);
		u[1] = (u8)(0x80 | (cp >> 6 & 0x3f));
		u[2] = (u8)(0x80 | (cp & 0x3f));
		return 3;
	}
	u[0] = (u8)(0xf0 | cp >> 18);
	u[1] = (u8)(0x80 | (cp >> 12 & 0x3f));
	u[2] = (u8)(0x80 | (cp >> 6 & 0x3f));
	u[3] = (u8)(0x80 | (cp & 0x3f));
	return 4;
}

/* log_event adds name, then the JSON string contents s[0..n) unescaped,
 * to the ring, cut at the last whole character that fits EVENT_MAX. */
static void log_event(const char *name, const u8 *s, u32 n)
{
	struct event *e = &events[nevents++ % EVENTS];
	e->len = 0;
	while (*name && e->len < EVENT_MAX)
		e->text[e->len++] = (u8)*name++;
	for (u32 i = 0; i < n;) {
		u8 u[4];
		u32 k = unescape_unit(s, n, &i, u);
		if (k > EVENT_MAX - (u32)e->len)
			break;
		memcpy(e->text + e->len, u, k);
		e->len = (u8)(e->len + k);
	}
}

/* events_body writes the ring to evbody, oldest first, one event a line
 * (no newline after the last), and returns its length. */
static u32 events_body(void)
{
	u32 n = 0, first = nevents > EVENTS ? nevents - EVENTS : 0;
	for (u32 k = first; k < nevents; k++) {
		if (n)
			evbody[n++] = '\n';
		memcpy(evbody + n, events[k % EVENTS].text, events[k % EVENTS].len);
		n += events[k % EVENTS].len;
	}
	return n;
}

/* ---- virtio-mmio and the queues ---- */

static int probe(uintptr_t base)
{
	return rd32(base + R_MAGIC) == VIRTIO_MAGIC && rd32(base + R_VERSION) == VIRTIO_VERSION &&
	       rd32(base + R_DEVICE_ID) == VIRTIO_ID_VSOCK;
}

static void vq_init(struct vq *q, void *desc, void *avail, void *used, u16 size)
{
	q->desc = desc;
	q->avail_flags = (volatile u16 *)avail;
	q->avail_idx = (volatile u16 *)avail + 1;
	q->avail_ring = (volatile u16 *)avail + 2;
	q->used_idx = (volatile u16 *)used + 1;
	q->used_ring = (volatile u32 *)((u8 *)used + 4);
	q->size = size;
	q->next_avail = 0;
	q->last_used = 0;
}

static int vq_setup(int index, struct vq *q)
{
	wr32(vsock + R_QUEUE_SEL, (u32)index);
	u32 max = rd32(vsock + R_QUEUE_NUM_MAX);
	if (max < q->size || rd32(vsock + R_QUEUE_READY) != 0)
		return 0;
	wr32(vsock + R_QUEUE_NUM, q->size);
	uintptr_t d = (uintptr_t)q->desc, a = (uintptr_t)q->avail_flags, u = (uintptr_t)q->used_idx - 2;
	wr32(vsock + R_QUEUE_DESC_LO, (u32)d);
	wr32(vsock + R_QUEUE_DESC_HI, (u32)(d >> 32));
	wr32(vsock + R_QUEUE_DRIVER_LO, (u32)a);
	wr32(vsock + R_QUEUE_DRIVER_HI, (u32)(a >> 32));
	wr32(vsock + R_QUEUE_DEVICE_LO, (u32)u);
	wr32(vsock + R_QUEUE_DEVICE_HI, (u32)(u >> 32));
	wr32(vsock + R_QUEUE_READY, 1);
	return 1;
}

static void vq_publish(struct vq *q)
{
	barrier();
	*q->avail_idx = q->next_avail;
	barrier();
}

static void vq_offer(struct vq *q, u16 head) { q->avail_ring[q->next_avail++ % q->size] = head; }

static void notify(int queue) { wr32(vsock + R_QUEUE_NOTIFY, (u32)queue); }

/* device_init resets the device and brings it up with VIRTIO_F_VERSION_1
 * alone (3.1.1), every receive and event buffer offered. */
static int device_init(void)
{
	wr32(vsock + R_STATUS, 0);
	wr32(vsock + R_STATUS, S_ACKNOWLEDGE);
	wr32(vsock + R_STATUS, S_ACKNOWLEDGE | S_DRIVER);
	wr32(vsock + R_DEV_FEATURES_SEL, 1);
	if (!(rd32(vsock + R_DEV_FEATURES) & F_VERSION_1_HI)) {
		LOG("the device does not offer VIRTIO_F_VERSION_1");
		return 0;
	}
	wr32(vsock + R_DRV_FEATURES_SEL, 0);
	wr32(vsock + R_DRV_FEATURES, 0);
	wr32(vsock + R_DRV_FEATURES_SEL, 1);
	wr32(vsock + R_DRV_FEATURES, F_VERSION_1_HI);
	wr32(vsock + R_STATUS, S_ACKNOWLEDGE | S_DRIVER | S_FEATURES_OK);
	if (!(rd32(vsock + R_STATUS) & S_FEATURES_OK)) {
		LOG("the device refused our features");
		return 0;
	}

	memset(&rxq, 0, sizeof rxq);
	memset(&txq, 0, sizeof txq);
	memset(&evq, 0, sizeof evq);
	vq_init(&rx, rxq.desc, &rxq.avail, &rxq.used, RX_SIZE);
	vq_init(&tx, txq.desc, &txq.avail, &txq.used, TX_SIZE);
	vq_init(&ev, evq.desc, &evq.avail, &evq.used, EV_SIZE);
	for (u16 i = 0; i < RX_SIZE; i++) {
		rxq.desc[i] = (struct desc){.addr = (uintptr_t)rxbufs[i], .len = RX_BUF, .flags = DESC_F_WRITE};
		vq_offer(&rx, i);
	}
	for (u16 i = 0; i < EV_SIZE; i++) {
		evq.desc[i] = (struct desc){.addr = (uintptr_t)evbufs[i], .len = sizeof evbufs[i], .flags = DESC_F_WRITE};
		vq_offer(&ev, i);
	}
	/* Transmission completes inside the notify's VM exit: no interrupt. */
	*tx.avail_flags = AVAIL_F_NO_INTERRUPT;
	vq_publish(&rx);
	vq_publish(&ev);
	if (!vq_setup(VQ_RX, &rx) || !vq_setup(VQ_TX, &tx) || !vq_setup(VQ_EVENT, &ev)) {
		LOG("the device's queues cannot be set up");
		return 0;
	}
	wr32(vsock + R_STATUS, S_ACKNOWLEDGE | S_DRIVER | S_FEATURES_OK | S_DRIVER_OK);
	if (rd32(vsock + R_STATUS) & S_NEEDS_RESET) {
		LOG("the device failed to start");
		return 0;
	}
	guest_cid = (u64)rd32(vsock + R_CONFIG) | (u64)rd32(vsock + R_CONFIG + 4) << 32;
	notify(VQ_RX);
	notify(VQ_EVENT);
	return 1;
}

/* ---- Interrupts: the device's pin and a LAPIC tick, only to wake us ---- */

static void ioapic_write(u32 reg, u32 v)
{
	wr32(IOAPIC, reg);
	wr32(IOAPIC + 0x10, v);
}

static void interrupts_init(void)
{
	u32 apic_id = rd32(LAPIC + 0x20) >> 24;
	wr32(LAPIC + 0x80, 0);                           /* TPR: accept all */
	wr32(LAPIC + 0xf0, 0x100 | VEC_SPURIOUS);        /* SVR: enabled */
	if (vsock_irq < 24) {
		ioapic_write(0x10 + 2 * vsock_irq + 1, apic_id << 24);
		ioapic_write(0x10 + 2 * vsock_irq, VEC_VIRTIO); /* fixed, edge, high, unmasked */
	}
	wr32(LAPIC + 0x3e0, 0xb);                        /* divide by 1 */
	wr32(LAPIC + 0x320, 0x20000 | VEC_TIMER);        /* periodic */
	wr32(LAPIC + 0x380, TICK_COUNT);
}

/* ---- Transmission ---- */

/* tx_packet sends one packet to the host from local port src to dst. */
static int tx_packet(u32 src, u32 dst, u16 op, u32 flags, const void *data, u32 len)
{
	if ((u16)(tx.next_avail - *tx.used_idx) >= TX_SLOTS)
		return 0; /* the device has not taken the last ones (it always does at once) */
	u16 slot = tx.next_avail % TX_SLOTS;
	struct vsock_hdr *h = &txhdrs[slot];
	*h = (struct vsock_hdr){.src_cid = guest_cid, .dst_cid = HOST_CID, .src_port = src, .dst_port = dst,
				.len = len, .type = TYPE_STREAM, .op = op, .flags = flags,
				.buf_alloc = INBUF_SIZE, .fwd_cnt = conn.fwd_cnt};
	if (src == conn.port)
		conn.told = conn.fwd_cnt;
	struct desc *d = &txq.desc[2 * slot];
	d[0] = (struct desc){.addr = (uintptr_t)h, .len = HDR_SIZE, .flags = len ? DESC_F_NEXT : 0, .next = (u16)(2 * slot + 1)};
	if (len)
		d[1] = (struct desc){.addr = (uintptr_t)data, .len = len};
	vq_offer(&tx, (u16)(2 * slot));
	vq_publish(&tx);
	notify(VQ_TX);
	return 1;
}

static int tx_ctrl(u16 op, u32 flags) { return tx_packet(conn.port, conn.host_port, op, flags, 0, 0); }

static u32 peer_credit(void)
{
	u32 used = conn.tx_cnt - conn.peer_fwd_cnt;
	return used > conn.peer_buf_alloc ? 0 : conn.peer_buf_alloc - used;
}

/* ---- Connection ---- */

static void reset_stream(void)
{
	inlen = 0;
	out.active = 0;
	flood = FLOOD_NONE;
	conn.tx_cnt = conn.peer_buf_alloc = conn.peer_fwd_cnt = conn.fwd_cnt = conn.told = 0;
}

/* drop ends the connection; a new one is tried after delay ticks. */
static void drop(int send_rst, u32 delay)
{
	if (send_rst && conn.state != IDLE)
		tx_ctrl(OP_RST, 0);
	conn.state = IDLE;
	reset_stream();
	conn.retry_at = ticks + delay;
}

static void connect(void)
{
	conn.port = conn.next_port++;
	if (conn.next_port == 0)
		conn.next_port = FIRST_LOCAL_PORT;
	reset_stream();
	conn.state = CONNECTING;
	conn.since = ticks;
	tx_ctrl(OP_REQUEST, 0);
}

static void consume(u32 n)
{
	memmove(inbuf, inbuf + n, inlen - n);
	inlen -= n;
	conn.fwd_cnt += n;
	if (conn.fwd_cnt - conn.told >= CREDIT_BATCH)
		tx_ctrl(OP_CREDIT_UPDATE, 0);
}

/* on_packet handles one packet from the device. */
static void on_packet(const struct vsock_hdr *h, const u8 *data, u32 avail)
{
	if (h->type != TYPE_STREAM || h->src_cid != HOST_CID || h->dst_cid != guest_cid)
		return;
	if (conn.state == IDLE || h->dst_port != conn.port || h->src_port != conn.host_port) {
		/* An old connection's, or the host asking to connect to us: no. */
		if (h->op != OP_RST)
			tx_packet(h->dst_port, h->src_port, OP_RST, 0, 0, 0);
		return;
	}
	conn.peer_buf_alloc = h->buf_alloc;
	conn.peer_fwd_cnt = h->fwd_cnt;
	switch (h->op) {
	case OP_RESPONSE:
		if (conn.state != CONNECTING) {
			drop(1, 1);
			return;
		}
		conn.state = CONNECTED;
		conn.backoff = 0;
		DEBUG("connected");
		return;
	case OP_RW:
		if (conn.state != CONNECTED || h->len > avail || h->len > INBUF_SIZE - inlen) {
			LOG("the host broke the stream's rules; resetting");
			drop(1, 1);
			return;
		}
		memcpy(inbuf + inlen, data, h->len);
		inlen += h->len;
		return;
	case OP_CREDIT_UPDATE:
		return;
	case OP_CREDIT_REQUEST:
		tx_ctrl(OP_CREDIT_UPDATE, 0);
		return;
	case OP_SHUTDOWN:
		DEBUG("the host closed the connection");
		drop(1, 1);
		return;
	case OP_RST:
		if (conn.state == CONNECTING) {
			/* Nobody listens yet: back off, 1 to MAX_BACKOFF_TICKS. */
			conn.backoff = conn.backoff ? conn.backoff * 2 : 1;
			if (conn.backoff > MAX_BACKOFF_TICKS)
				conn.backoff = MAX_BACKOFF_TICKS;
			drop(0, conn.backoff);
		} else {
			DEBUG("the host reset the connection");
			drop(0, 1);
		}
		return;
	default:
		drop(1, 1);
	}
}

/* rx_poll takes every packet the device has delivered and offers the
 * buffers again. */
static int rx_poll(void)
{
	u16 used = *rx.used_idx;
	if (used == rx.last_used)
		return 0;
	barrier();
	u16 offered = rx.next_avail;
	while (rx.last_used != used) {
		u32 slot = rx.last_used % RX_SIZE;
		u32 id = rx.used_ring[2 * slot], len = rx.used_ring[2 * slot + 1];
		if (id < RX_SIZE && len >= HDR_SIZE && len <= RX_BUF) {
			struct vsock_hdr h;
			memcpy(&h, rxbufs[id], HDR_SIZE);
			on_packet(&h, rxbufs[id] + HDR_SIZE, len - HDR_SIZE);
		}
		if (id < RX_SIZE)
			vq_offer(&rx, (u16)id);
		rx.last_used++;
	}
	vq_publish(&rx);
	/* A device that used every buffer offered before this publish may
	 * have found the ring empty and be waiting, data in hand, for a
	 * kick. Read its used idx only after our avail idx is visible. */
	fence();
	if (*rx.used_idx == offered)
		notify(VQ_RX);
	return 1;
}

/* ev_poll handles device events: a transport reset (the VM was restored
 * from a snapshot) means every connection is gone. */
static int ev_poll(void)
{
	u16 used = *ev.used_idx;
	if (used == ev.last_used)
		return 0;
	barrier();
	while (ev.last_used != used) {
		u32 slot = ev.last_used % EV_SIZE;
		u32 id = ev.used_ring[2 * slot];
		if (id < EV_SIZE) {
			if (evbufs[id][0] == EVENT_TRANSPORT_RESET) {
				DEBUG("transport reset: connecting again");
				conn.state = IDLE;
				reset_stream();
				conn.backoff = 0;
				conn.retry_at = ticks;
			}
			vq_offer(&ev, (u16)id);
		}
		ev.last_used++;
	}
	vq_publish(&ev);
	notify(VQ_EVENT);
	return 1;
}

/* ---- Frames ---- */

static u8 *head_start(u8 *p, const char *json)
{
	p += 4;
	while (*json)
		*p++ = (u8)*json++;
	return p;
}

/* send_parts queues a and then b (blen may be 0) for send_some; consume
 * is how much of inbuf to consume once both are out. */
static void send_parts(const u8 *a, u32 alen, const u8 *b, u32 blen, u32 consume)
{
	out.part[0] = a;
	out.len[0] = alen;
	out.part[1] = b;
	out.len[1] = blen;
	out.cur = 0;
	out.off = 0;
	out.consume = consume;
	out.active = 1;
}

/* frame_head closes the frame head in outhead[0..end): the JSON header's
 * length before it, the body length declared (blen) after it; it returns
 * the head's size. */
static u32 frame_head(u8 *end, u32 blen)
{
	u32 hl = (u32)(end - outhead) - 4;
	put_be32(outhead, hl);
	put_be32(end, blen);
	return hl + 8;
}

/* answer queues a frame: outhead[0..end) holds the length prefix's room
 * and the JSON header; body follows. consume is the request's size. */
static void answer(u8 *end, const u8 *body, u32 blen, u32 consume)
{
	send_parts(outhead, frame_head(end, blen), body, blen, consume);
}

#define LOG_HEAD "{\"type\":\"log\",\"stream\":\"stdout\"}"

/* flood_start turns the connection into a flood of the given kind:
 * floodbuf gets FLOOD_FRAMES log frames of FLOOD_LINE bytes of "flood ",
 * or bytes that are not a frame (what a reader takes for lengths in them
 * is anything). */
static void flood_start(int kind)
{
	static const char word[] = "flood ";
	floodlen = 0;
	if (kind == FLOOD_LOGS) {
		u32 n = frame_head(head_start(outhead, LOG_HEAD), FLOOD_LINE);
		for (int f = 0; f < FLOOD_FRAMES; f++) {
			memcpy(floodbuf + floodlen, outhead, n);
			floodlen += n;
			for (u32 i = 0; i < FLOOD_LINE; i++)
				floodbuf[floodlen++] = (u8)word[i % (sizeof word - 1)];
		}
	} else {
		u64 r = seed ^ rdtsc();
		for (; floodlen < FLOOD_BUF; floodlen += 8) {
			r = mix64(r);
			for (u32 k = 0; k < 8; k++)
				floodbuf[floodlen + k] = (u8)(r >> (8 * k));
		}
	}
	flood = kind;
	DEBUG("flooding");
}

/* flood_next queues the flood's next run of frames (or garbage), and
 * drops whatever the host sends meanwhile: a flooding guest answers
 * nothing. */
static void flood_next(void)
{
	if (inlen)
		consume(inlen);
	if (flood == FLOOD_GARBAGE_HEAD) {
		/* A valid header, then a body length no host should allocate. */
		send_parts(outhead, frame_head(head_start(outhead, LOG_HEAD), FLOOD_DECLARED), floodbuf, floodlen, 0);
		flood = FLOOD_GARBAGE_BYTES;
		return;
	}
	send_parts(floodbuf, floodlen, 0, 0, 0);
}

static void on_frame(const u8 *hdr, u32 hl, const u8 *body, u32 bl, u32 flen)
{
	static const u8 ok[] = "ok";
	const u8 *type, *id = 0, *op;
	u32 tl, il, ol;
	if (!json_string(hdr, hl, "type", &type, &tl)) {
		consume(flen);
		return;
	}
	if (is(type, tl, "hello")) {
		/* The host's fresh entropy seed, mixed with our clock. */
		u64 s = 0xcbf29ce484222325ull;
		for (u32 i = 0; i < bl; i++)
			s = (s ^ body[i]) * 0x100000001b3ull;
		seed = mix64(s ^ rdtsc());
		if (checkpointed) {
			/* A restored VM: its after-restore hooks run once. */
			checkpointed = 0;
			DEBUG("hello after a checkpoint: restored");
			log_event(EVENT_AFTER_RESTORE, 0, 0);
			answer(head_start(outhead, "{\"type\":\"restored\"}"), 0, 0, flen);
			return;
		}
		DEBUG("hello");
		answer(head_start(outhead, "{\"type\":\"ready\"}"), 0, 0, flen);
		return;
	}
	if (is(type, tl, "checkpoint")) {
		if (hang_checkpoint) {
			/* A before-snapshot hook that never returns: no answer,
			 * and the host gives up at its deadline. */
			DEBUG("checkpoint: hanging");
			consume(flen);
			return;
		}
		DEBUG("checkpoint");
		log_event(EVENT_BEFORE_SNAPSHOT, 0, 0);
		checkpointed = 1;
		answer(head_start(outhead, "{\"type\":\"checkpoint\"}"), 0, 0, flen);
		return;
	}
	if (!is(type, tl, "invoke")) {
		consume(flen);
		return;
	}
	if (!json_string(hdr, hl, "id", &id, &il))
		il = 0;
	log_event(EVENT_INVOKE, id, il);
	u8 *p = head_start(outhead, "{\"type\":\"response\",\"id\":\"");
	memcpy(p, id, il);
	p += il;
	*p++ = '"';
	*p++ = '}';
	if (json_string(body, bl, "op", &op, &ol) && is(op, ol, "random")) {
		u64 r = mix64(seed ^ rdtsc() ^ mix64(++rnd_count));
		for (int i = 0; i < 16; i++)
			rndbody[i] = (u8)"0123456789abcdef"[(r >> (60 - 4 * i)) & 0xf];
		answer(p, rndbody, sizeof rndbody, flen);
		return;
	}
	if (json_string(body, bl, "op", &op, &ol) && is(op, ol, "events")) {
		answer(p, evbody, events_body(), flen);
		return;
	}
	if (json_string(body, bl, "op", &op, &ol) && is(op, ol, "hang-checkpoint")) {
		hang_checkpoint = 1;
		answer(p, ok, sizeof ok - 1, flen);
		return;
	}
	if (json_string(body, bl, "op", &op, &ol) && (is(op, ol, "flood-logs") || is(op, ol, "flood-garbage"))) {
		flood_start(is(op, ol, "flood-logs") ? FLOOD_LOGS : FLOOD_GARBAGE_HEAD);
		consume(flen);
		return;
	}
	answer(p, body, bl, flen);
}

/* send_some sends what the host's credit allows of the answer; it
 * reports whether it sent anything. */
static int send_some(void)
{
	int sent = 0;
	while (out.active) {
		if (out.cur == 2 || (out.cur == 1 && out.len[1] == 0)) {
			out.active = 0;
			consume(out.consume);
			return 1;
		}
		u32 n = out.len[out.cur] - out.off, credit = peer_credit();
		if (n > credit)
			n = credit;
		if (n > MAX_PACKET)
			n = MAX_PACKET;
		if (n == 0) {
			/* Out of credit: the device updates it as the host reads;
			 * ask once a tick in case an update was missed. */
			if (ticks != conn.credit_asked) {
				conn.credit_asked = ticks;
				tx_ctrl(OP_CREDIT_REQUEST, 0);
			}
			return sent;
		}
		if (!tx_packet(conn.port, conn.host_port, OP_RW, 0, out.part[out.cur] + out.off, n))
			return sent;
		conn.tx_cnt += n;
		out.off += n;
		sent = 1;
		if (out.off == out.len[out.cur]) {
			out.cur++;
			out.off = 0;
		}
	}
	return sent;
}

/* pump answers whole frames in inbuf, one at a time. */
static int pump(void)
{
	int progress = 0;
	while (conn.state == CONNECTED) {
		if (out.active) {
			if (!send_some())
				return progress;
			progress = 1;
			continue;
		}
		if (flood) {
			flood_next();
			continue;
		}
		if (inlen < 4)
			return progress;
		u32 hl = be32(inbuf);
		if (hl > MAX_HEADER) {
			LOG("frame header too large; resetting");
			drop(1, 1);
			return 1;
		}
		if (inlen < 8 + hl)
			return progress;
		u32 bl = be32(inbuf + 4 + hl);
		if (bl > MAX_BODY) {
			LOG("frame body too large; resetting");
			drop(1, 1);
			return 1;
		}
		if (inlen - 8 - hl < bl)
			return progress;
		on_frame(inbuf + 4, hl, inbuf + 8 + hl, bl, 8 + hl + bl);
		progress = 1;
	}
	return progress;
}

/* ---- Start-up and the main loop ---- */

/* find_device looks for virtio_mmio.device=SIZE@BASE:IRQ on the command
 * line (and reads our own switches), then probes Kindling's windows. */
static void find_device(const char *cmdline)
{
	const char *s = cmdline;
	while (s && *s) {
		while (*s == ' ')
			s++;
		const char *rest;
		u64 size, base, irq;
		if (starts(s, "virtio_mmio.device=", &rest) && parse_num(&rest, &size, 1) && *rest++ == '@' &&
		    parse_num(&rest, &base, 0) && *rest++ == ':' && parse_num(&rest, &irq, 0) && !vsock &&
		    size >= 0x200 && probe((uintptr_t)base)) {
			vsock = (uintptr_t)base;
			vsock_irq = (u32)irq;
		} else if (starts(s, "echoguest.port=", &rest) && parse_num(&rest, &base, 0) && base && base < 0xffffffffu) {
			conn.host_port = (u32)base;
		} else if (starts(s, "echoguest.debug", &rest) && (*rest == ' ' || *rest == 0)) {
			debug = 1;
		} else if (starts(s, "echoguest.poll", &rest) && (*rest == ' ' || *rest == 0)) {
			poll_only = 1;
		}
		while (*s && *s != ' ')
			s++;
	}
	/* Kindling puts virtio-mmio windows 4 KiB apart from 0xd0000000,
	 * IRQs from 5 (vmm/virtio.go). */
	for (u32 i = 0; !vsock && i < 19; i++) {
		if (probe(0xd0000000ul + 0x1000ul * i)) {
			vsock = 0xd0000000ul + 0x1000ul * i;
			vsock_irq = 5 + i;
		}
	}
}

/* idle sleeps until an interrupt, unless there is work already. */
static void idle(void)
{
	irq_seen = 0;
	barrier();
	u32 isr = rd32(vsock + R_INTERRUPT_STATUS);
	if (isr)
		wr32(vsock + R_INTERRUPT_ACK, isr);
	if (isr & INT_CONFIG && rd32(vsock + R_STATUS) & S_NEEDS_RESET) {
		LOG("the device needs a reset; starting it again");
		while (!device_init())
			sleep_trap();
		drop(0, 0);
		return;
	}
	if (*rx.used_idx != rx.last_used || *ev.used_idx != ev.last_used)
		return;
	if (conn.state == IDLE && (int)(ticks - conn.retry_at) >= 0)
		return;
	sleep_trap();
}

void user_main(u32 start_info)
{
	const char *cmdline = 0;
	LOG("starting at CPL 3");
	if (start_info && *(volatile u32 *)(uintptr_t)start_info == 0x336ec578) {
		u64 p = *(volatile u64 *)(uintptr_t)(start_info + 24);
		if (p && p < 0xc0000000ul)
			cmdline = (const char *)(uintptr_t)p;
	}
	conn.host_port = DEFAULT_PORT;
	conn.next_port = FIRST_LOCAL_PORT;
	vsock_irq = ~0u;
	find_device(cmdline);
	if (!vsock) {
		LOG("no virtio-vsock device found; stopping");
		for (;;)
			sleep_trap();
	}
	interrupts_init();
	while (!device_init())
		sleep_trap(); /* a broken device: nothing to do but wait */
	puts_("echoguest: virtio-vsock at ");
	puthex(vsock);
	puts_(" irq ");
	putdec(vsock_irq);
	puts_(" cid ");
	putdec(guest_cid);
	puts_(", host port ");
	putdec(conn.host_port);
	puts_("\n");

	conn.state = IDLE;
	conn.retry_at = ticks;
	u64 busy_at = rdtsc();
	int asleep = 0; /* woke with nothing to do yet: sleep again at once */
	for (;;) {
		int work = ev_poll();
		work |= rx_poll();
		if (conn.state == IDLE && (int)(ticks - conn.retry_at) >= 0) {
			connect();
			work = 1;
		} else if (conn.state == CONNECTING && ticks - conn.since > CONNECT_TIMEOUT_TICKS) {
			LOG("no answer to our connection request; trying again");
			drop(1, 1);
		}
		work |= pump();
		if (work) {
			busy_at = rdtsc();
			asleep = 0;
			continue;
		}
		if (poll_only || (!asleep && rdtsc() - busy_at < IDLE_CYCLES)) {
			relax();
			continue;
		}
		idle();
		asleep = 1;
	}
}
