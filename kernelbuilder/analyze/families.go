package analyze

import "fmt"

// Socket address families the kernel gates behind options (see
// include/linux/socket.h for the numbers).
var families = map[int64]string{
	1: "AF_UNIX", 2: "AF_INET", 10: "AF_INET6", 16: "AF_NETLINK", 17: "AF_PACKET",
	38: "AF_ALG", 40: "AF_VSOCK",
}

func familyName(v int64) string {
	if n, ok := families[v]; ok {
		return n
	}
	return fmt.Sprintf("AF_%d", v)
}

// NeedOptions are the Kconfig options each need requires, with why.
func NeedOptions(need string) []string {
	switch need {
	case "AF_UNIX":
		return []string{"CONFIG_UNIX"}
	case "AF_INET":
		return []string{"CONFIG_INET"}
	case "AF_INET6":
		return []string{"CONFIG_INET", "CONFIG_IPV6"}
	case "AF_PACKET":
		return []string{"CONFIG_PACKET"}
	case "AF_ALG":
		return []string{"CONFIG_CRYPTO_USER_API"}
	case "AF_VSOCK":
		return []string{"CONFIG_VSOCKETS"}
	case "AF_NETLINK":
		return nil // built with CONFIG_NET
	}
	return nil
}
