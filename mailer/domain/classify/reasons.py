"""Why a delivery failed: the remote server's words and status code mapped to a Sisimai reason."""

from __future__ import annotations

import re

from mailer.domain.classify.model import Reason

# Phrases real MTAs and providers use, learned from Sisimai's reason tables and the corpus. Order
# matters: the first reason whose pattern matches wins, so the specific causes ("over quota",
# "spam", "SPF") come before the generic ones that often share a sentence with them ("rejected").
_PHRASES: tuple[tuple[Reason, tuple[str, ...]], ...] = (
    # Definite "no such host" answers, ahead of the DNS errors that share their sentence
    # (Postfix: "Host or domain name not found. Name service error for name=...").
    (
        Reason.HOST_UNKNOWN,
        (
            r"the account or domain may not exist|host or domain name not found",
            r"dns lookup failure: host \S+ not found",
        ),
    ),
    (Reason.NOT_ACCEPT, (r"no mx found for domain|null mx|does not accept (?:any )?mail",)),
    (
        Reason.MAILER_ERROR,
        (
            r"(?:procmail|maildrop|mail\.local|local delivery|pipe to|command) (?:failed|died)|procmail:",
            r"mailer error|unknown mailer error|exit code|x-unix;|command output|execution failed",
        ),
    ),
    (
        Reason.MESG_TOO_BIG,
        (
            r"message (?:size )?(?:is )?too (?:big|large)",
            r"message size exceeds",
            r"exceeds (?:the )?(?:maximum|fixed maximum) message size",
            r"size limit exceeded|message length exceeds|mail size limit",
            r"message file too big|size exceeds the maximum",
            r"email too large|maximum allowed message size",
        ),
    ),
    (
        Reason.EXCEED_LIMIT,
        (
            r"message too large for this recipient",
            r"recipient's mailbox limits",
            r"exceeds? .*limit",
        ),
    ),
    (
        Reason.MAILBOX_FULL,
        (
            r"mailbox (?:is )?full|full mailbox|mailbox has exceeded|mailfolder is full",
            r"over (?:the allowed )?quota|quota (?:exceeded|violation)|exceed\w* (?:\w+ )?quota",
            r"over disk quota|disc quota|disk quota|quota usage exceeded|quota full",
            r"insufficient (?:disk )?space|not enough (?:storage )?space|enough space",
            r"mailbox size limit|storage allocation|user has too many messages",
            r"space has been used up|boite du destinataire pleine|too much mail data",
            r"mailbox (?:would )?exceed|exceeded the local limit|mailbox is over",
            r"account is full|inbox is full|user's mailbox is full",
        ),
    ),
    (
        Reason.HAS_MOVED,
        (
            r"has been replaced by|address (?:has )?(?:been )?changed to|has moved|no longer active\. new address",
        ),
    ),
    (
        Reason.SUSPEND,
        (
            r"(?:is )?currently suspended|mailbox (?:is )?(?:frozen|disabled|suspended)",
            r"account (?:has been |is )?(?:disabled|suspended|inactive|locked|deactivated)",
            r"account that you tried to reach is disabled|deactivated mailbox",
            r"invalid/inactive user|temporarily inactive|recipient suspend|user suspended",
            r"boite du destinataire archivee|disabled or discontinued|temporary locked",
            r"recipient account is blocked|compte du destinataire est bloque",
            r"mailbox (?:is )?inactive|is inactive|inactive (?:user|account|mailbox)",
            r"this mailbox is disabled|mailbox unavailable or access denied",
            r"not (?:currently )?in use|is no longer (?:in use|being monitored)",
        ),
    ),
    (
        Reason.AUTH_FAILURE,
        (
            r"dmarc|\bspf\b.*(?:fail|record|settings)|sender policy framework",
            r"dkim.*(?:fail|invalid|not pass)|not pass (?:dkim|spf)|unauthenticated email",
            r"is not allowed to send mail from|is not allowed to send from .* spf",
            r"authentication (?:check )?fail(?:ed|ure).*(?:spf|dkim|domain)",
        ),
    ),
    (
        Reason.REQUIRE_PTR,
        (
            r"reverse dns|\bptr\b|no reverse|cannot find your hostname|ip name lookup failed",
            r"cannot resolve your address|client host rejected: cannot find your",
            r"hostname (?:does not|doesn't) resolve|unresolvable address|rdns",
        ),
    ),
    (
        Reason.BAD_REPUTATION,
        (
            r"poor (?:email )?reputation|bad reputation|sender reputation|ip reputation|low reputation",
            r"deferred due to unexpected volume or user complaints",
        ),
    ),
    (
        Reason.NOT_COMPLIANT_RFC,
        (
            r"not (?:rfc|in) (?:5322|2822|822)|rfc ?(?:5322|2822) (?:compliant|violation)",
            r"multiple (?:from|to|subject|date|sender|message-id) headers",
            r"multiple addresses in (?:the )?from:? header",
            r"duplicate (?:header|from|subject)|not compliant with rfc",
            r"header (?:is )?(?:missing|malformed|invalid)|missing (?:a )?(?:date|from|message-id) header",
            r"is not rfc compliant",
        ),
    ),
    (Reason.VIRUS_DETECTED, (r"virus|malware|infected|dangerous attachment|executable",)),
    (
        Reason.SPAM_DETECTED,
        (
            r"\bspam\b|unsolicited|\bbulk\b|\bube\b|spamassassin|junk mail",
            r"content (?:filter )?reject|message content rejected|rejecting (?:banned|mail) content",
            r"message filtered|looks like spam|suspected spam|classified as spam",
            r"mail content denied|recurrent pattern detection|uribl|\bsurbl\b",
            r"mail rejete\. mail rejected\..*506",
        ),
    ),
    (
        Reason.POLICY_VIOLATION,
        (
            r"policy violation|policy reasons|denied by policy|due to (?:local )?policy",
            r"organi[sz]ation(?:al)? (?:settings|policy)|security policies",
            r"illegal attachment|members-only list|closed mailing list|not subscribed to this group",
            r"protocol violation|header error|messages with multiple addresses|mass mailer",
            r"captcha|content presents a potential|not accepting mail with",
            r"message given low priority",
        ),
    ),
    (
        Reason.NO_RELAYING,
        (
            r"relay(?:ing)? (?:access )?(?:denied|not permitted|prohibited|not allowed)",
            r"not (?:permitted|allowed) to relay|unable to relay|we do not relay|no relaying",
            r"relay not permitted|is not a gateway|cannot relay|relaying denied|open relay",
            r"that domain isn't in my list of allowed rcpthosts",
        ),
    ),
    (
        Reason.SECURITY_ERROR,
        (
            r"authentication (?:required|failure|credentials invalid|turned on)",
            r"insecure mail relay|tls required|starttls|unauthenticated senders not allowed",
            r"you are not authorized to send|verification failure|not authorized to perform",
            r"account not subscribed to ses|sender address (?:is )?(?:not )?(?:verified|allowed)",
            r"you don't authenticate|is a dead domain|authentification requise",
        ),
    ),
    (
        Reason.TOO_MANY_CONN,
        (
            r"too many (?:connections|concurrent|sessions|recipients|messages)",
            r"rate limit|ratelimit|try again later.*(?:rate|frequency)|throttl",
            r"exceeded? (?:the )?(?:connection|rate|sending) limit|too fast|sending rate",
            r"has exceeded the maximum number|message rate|frequency limited|daily relay quota",
        ),
    ),
    (
        Reason.BLOCKED,
        (
            r"blacklist|blocklist|block list|black list|\brbl\b|dnsbl|spamhaus|spamcop|barracuda",
            r"client host (?:\[[^\]]*\] )?(?:rejected|blocked)|access from ip address .* blocked",
            r"(?:your|the|sending) ip (?:address )?(?:\S+ )?(?:is |has been )?(?:blocked|listed|banned|rejected)",
            r"\bip\b.* (?:is )?(?:blocked|blacklisted|listed)|blocked using|(?<!not )listed (?:in|at|on)",
            r"connection (?:refused|dropped|reset|rejected)|go away|dynamic ip|dial-?up",
            r"not currently accepting mail from your ip|rejecting open proxy",
            r"please (?:use|get) |hosts with dynamic|mismatches client ip|reputation problems",
            r"temporarily deferred due to user complaints|is blocked|has been blocked",
            r"mail server at .* is blocked|no access from mail server|your network is",
            r"service unavailable; client|refused to talk to me|access denied\. ip",
            r"banned sending ip|access denied, banned|blocked for abuse|messages from [\d.]+ weren't sent",
            r"sender ip address rejected|confirm this mail server|not allowed to send mail from",
            r"poor email reputation|\[ts0[0-9]\]|\brl0\d|domain .* mismatches",
            # T-Online: "554 IP=x - A problem occurred. (Ask your postmaster ...) (BL)"
            r"a problem occurred\. \(ask your postmaster",
        ),
    ),
    (
        Reason.REJECTED,
        (
            r"sender (?:address )?(?:was )?rejected|sender (?:is )?(?:denied|blocked|not allowed)",
            r"sender verify failed|sender (?:email )?address rejected|rejected sender",
            r"invalid sender|empty envelope senders|null sender is not allowed|bogus mail from",
            r"domain of sender address|sender domain|unroutable sender|mail from not owned",
            r"administrative prohibition|batv|no third-party dsns|not a registered gateway user",
            r"returned mail not accepted|backscatter|envelope blocked|sender not pre-approved",
            r"fully qualified email address required|address has been blacklisted",
            r"access denied \(in reply to mail from command\)|sender is spammer",
            r"delivery not authorized, message refused|purported responsible address",
            r"domain is invalid\. please provide a valid from",
            r"email address is not verified|sender address does not exist",
        ),
    ),
    (
        Reason.NETWORK_ERROR,
        (
            r"could not connect and send|dns records for the destination computer",
            r"hop count exceeded|mail loop|routing loop|forwarding loop|message looping",
            r"too many hops|no route to host|unable to resolve route|unrouteable mail domain",
            r"host is unreachable|host not found, try again|name server reply",
            r"network (?:is )?unreachable|network error|connection (?:lost|closed)",
            r"dns error|dns type '?\w+'? lookup|nxdomain|name service error",
        ),
    ),
    (
        Reason.HOST_UNKNOWN,
        (
            r"domain (?:does not exist|is not reachable|must exist|not found|unknown)",
            r"host (?:or domain name )?(?:not found|unknown)|unknown (?:host|domain)",
            r"no such domain|name or service not known|unrouteable address|host unreachable",
            r"mail domain mentioned in email address is unknown|recipient domain must exist",
            r"the account or domain may not exist|unknown domain name|no mx (?:record|host)",
            r"could not be resolved|non-existent domain",
            r"(?<![@\w.-])(?:[a-z0-9-]+\.)+[a-z]{2,} does not exist",
            r"does not have a valid mx|domain has no mx",
        ),
    ),
    (
        Reason.NOT_ACCEPT,
        (
            r"does not accept (?:any )?mail|not accepting (?:any )?mail|null mx|mail is not accepted",
            r"accepts no mail|no mail is accepted|mail for this domain is not accepted",
        ),
    ),
    (
        Reason.USER_UNKNOWN,
        (
            r"user unknown|unknown user|no such (?:user|mailbox|recipient|person|address)",
            r"(?:user|recipient|mailbox|address|account) (?:does not|doesn't|not) exist",
            r"(?:user|recipient|mailbox|address) (?:not found|unknown|invalid|is unknown|not known)",
            r"(?:invalid|unknown|bad|non-?existent?) (?:recipient|mailbox|address|user|e-?mail address)",
            r"mailbox (?:not found|unavailable|is unavailable|unavaiable|not present|invalid)",
            r"email account that you tried to reach does not exist|address does not exist",
            r"is not a (?:valid|known) (?:user|mailbox|recipient)|not a valid (?:recipient|user)",
            r"no mailbox (?:here|found|by that name)",
            r"requested action not taken: mailbox unavailable|resolver\.adr\.recipient",
            r"no account by that name|there is no one at this address|utilisateur inconnu",
            r"no existe|nessun utente|badrcptto|validrcptto|not listed in domino directory",
            r"this address no longer accepts mail|is not an active address|user not active",
            r"could not be found|does not exist|not our customer|no longer valid",
            r"addressee unknown|recipient not ok|no valid recipients|destination addresses",
            r"user doesn't have a|not a local address|recipient is not local|unknown local.?part",
            r"email address could not be found|is not a known user|user missing home",
            r"cannot be delivered to this address",
            r"not listed in (?:the )?public name (?:&|and) address book",  # Lotus Domino
            r"check (?:if|that|whether) (?:the )?(?:e-?mail )?address is (?:correct|valid)",
            r"mailbox is not available|not found in (?:the )?directory|in name directory",
        ),
    ),
    (
        Reason.FILTERED,
        (
            r"refused due to recipient preferences|only accepting mail from specific",
            r"resolver\.rst\.notauthorized|this account is protected|user reject",
            r"you have been blocked by the recipient|bounced address|refuse to receive",
            r"restricted sms e-mail|not accepting any mail|not authorized to send to",
            r"sender is not allowed|rejected by recipient|filtered|filter",
        ),
    ),
    (
        Reason.EXPIRED,
        (
            r"connection timed out|timed out|time(?:out)? expired|giving up|gave up",
            r"could not find a gateway for|delivery time expired|not been collected after",
            r"message expired|expired after|in (?:the )?queue too long|queue period",
            r"retry time not reached|retry timeout exceeded|server did not respond",
            r"(?:not|n't) (?:been )?delivered within|has not been delivered for|delayed for more than",
            r"(?:host|server) (?:is )?not responding|failed (?:after )?\d+ (?:delivery )?attempts",
            r"did not accept our requests to connect|envelope expired",
            r"unable to deliver .* within|delivery (?:attempts )?(?:will )?(?:continue|be retried)",
            r"not yet been delivered|still trying|will retry|could not deliver for",
        ),
    ),
    (Reason.SYSTEM_FULL, (r"mail system full|system (?:is )?full|disk full|out of disk",)),
    (
        Reason.SYNTAX_ERROR,
        (
            r"syntax error|command unrecognized|unrecognized command",
            r"(?:bad|improper|wrong) sequence of commands",
        ),
    ),
    (
        Reason.SYSTEM_ERROR,
        (
            r"system error|internal (?:server )?error|server error|local error|temporary failure",
            r"too many errors|resources temporarily|service (?:not available|unavailable)",
            r"mail server (?:temporarily )?(?:rejected|unavailable)|problem with the remote",
        ),
    ),
    (Reason.CONTENT_ERROR, (r"content error|message content|improper|malformed|encoding",)),
)

_COMPILED = tuple((reason, re.compile("|".join(pats))) for reason, pats in _PHRASES)


_CONTINUATION = re.compile(r"(?<=\s)[245]\d\d[ -](?:[245]\.\d{1,3}\.\d{1,3}\s)?")


def reason_from_text(text: str) -> Reason | None:
    """The first reason whose phrases appear in the server's words, if any."""
    low = re.sub(r"\s+", " ", _CONTINUATION.sub(" ", text.lower()))
    if not low.strip():
        return None
    for reason, pattern in _COMPILED:
        if pattern.search(low):
            return reason
    return None


# RFC 3463 / IANA enhanced status codes -> the reason they name. Codes that name no single cause
# (x.0.0, x.5.0, x.7.1, ...) are left out, so the text decides for them.
_BY_STATUS: dict[str, Reason] = {
    "1.1": Reason.USER_UNKNOWN,
    "1.2": Reason.HOST_UNKNOWN,
    "1.3": Reason.USER_UNKNOWN,
    "1.4": Reason.USER_UNKNOWN,
    "1.6": Reason.HAS_MOVED,
    "1.7": Reason.REJECTED,
    "1.8": Reason.REJECTED,
    "2.1": Reason.FILTERED,
    "2.2": Reason.MAILBOX_FULL,
    "2.3": Reason.EXCEED_LIMIT,
    "2.4": Reason.SYSTEM_ERROR,
    "3.1": Reason.SYSTEM_FULL,
    "3.2": Reason.SYSTEM_ERROR,
    "3.3": Reason.SYSTEM_ERROR,
    "3.4": Reason.MESG_TOO_BIG,
    "3.5": Reason.SYSTEM_ERROR,
    "4.1": Reason.EXPIRED,
    "4.2": Reason.NETWORK_ERROR,
    "4.3": Reason.SYSTEM_ERROR,
    "4.4": Reason.HOST_UNKNOWN,
    "4.5": Reason.SYSTEM_FULL,
    "4.6": Reason.NETWORK_ERROR,
    "4.7": Reason.EXPIRED,
    "5.3": Reason.TOO_MANY_CONN,
    "5.4": Reason.SYNTAX_ERROR,
    "6.0": Reason.CONTENT_ERROR,
    "7.0": Reason.SECURITY_ERROR,
    "7.1": Reason.SECURITY_ERROR,  # "delivery not authorized, message refused"
    "7.7": Reason.POLICY_VIOLATION,
    "7.9": Reason.SECURITY_ERROR,
    "7.13": Reason.SUSPEND,
    "7.23": Reason.AUTH_FAILURE,
    "7.24": Reason.AUTH_FAILURE,
    "7.25": Reason.REQUIRE_PTR,
    "7.26": Reason.AUTH_FAILURE,
    "7.27": Reason.NOT_ACCEPT,
}


def reason_from_status(status: str) -> Reason | None:
    parts = status.split(".")
    if len(parts) != 3:
        return None
    return _BY_STATUS.get(f"{parts[1]}.{parts[2]}")


STATUS_RE = re.compile(r"(?<![\d.])([245])\.(\d{1,3})\.(\d{1,3})(?![\d.]*\d)")
REPLY_CODE_RE = re.compile(r"(?<![\d.])([245]\d\d)(?:[ -]|$)")


def status_in_text(text: str) -> str:
    """The first enhanced status code in a diagnostic, e.g. "550 5.1.1 <x>... User unknown"."""
    for m in STATUS_RE.finditer(text):
        if m.group(1) in "45":
            return ".".join(m.groups())
    return ""


def reply_code_in_text(text: str) -> str:
    m = REPLY_CODE_RE.search(text)
    return m.group(1) if m and m.group(1)[0] in "45" else ""
