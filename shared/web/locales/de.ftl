## Shared by every page
site-name = Custodian
skip-to-content = Zum Inhalt springen
language = Sprache
sign-in = Bei Ihrem Identitätsanbieter anmelden
sign-out = Abmelden
signed-in-as = Angemeldet als { $subject }
never = nie
datetime = { $day }. { $month } { $year }, { $time }
month-1 = Januar
month-2 = Februar
month-3 = März
month-4 = April
month-5 = Mai
month-6 = Juni
month-7 = Juli
month-8 = August
month-9 = September
month-10 = Oktober
month-11 = November
month-12 = Dezember
unavailable = Diese Information ist gerade nicht verfügbar. Bitte versuchen Sie es gleich noch einmal.
back-to-portal = Zurück zu Ihren Einwilligungen

## The person's portal
portal-title = Ihre Einwilligungen
portal-intro = Diese vertrauenswürdigen Plattformen dürfen bei Gesundheitsdiensten in Ihrem Namen handeln, weil Sie eingewilligt haben. Sie können Ihre Einwilligung jederzeit widerrufen.
portal-signed-out = Melden Sie sich an, um zu sehen, welche Plattformen Ihre Einwilligung haben, und um sie zu widerrufen.
portal-none = Keine Plattform hat Ihre Einwilligung.
platform-unregistered = Diese Plattform steht nicht im Register der vertrauenswürdigen Plattformen: Die juristische Person dahinter ist unbekannt.
platform-legal = { $name }, Unternehmensnummer { $number }
platform-may-access = Worauf sie zugreifen darf
platform-assurance = Vertrauensniveau
platform-assurance-unknown = nicht angegeben
platform-consented = Einwilligung erteilt
platform-last-acted = Zuletzt für Sie gehandelt
platform-views = Apps, die Ihre Daten anzeigen
platform-views-none = keine registriert
revoke = Einwilligung widerrufen
history-title = Beendete Einwilligungen
history-none = Noch keine Ihrer Einwilligungen ist beendet.
history-ended = Beendet am { $when }
history-reason-revoked = Sie haben sie widerrufen
history-reason-expired = Beendet nach langer Inaktivität
history-reason-incident = Beendet wegen eines Sicherheitsvorfalls bei der Plattform
history-receipt = Ansehen, was getan wurde
history-no-receipt = Keine Quittung

## Scopes, in plain words (a platform's registry entry may say more)
scope-openid = Wer Sie sind: Ihre Kennung beim Identitätsanbieter
scope-profile = Ihr Name und Ihr Basisprofil
scope-email = Ihre E-Mail-Adresse
scope-offline_access = Für Sie handeln, während Sie nicht angemeldet sind
scope-unknown = Zugriff namens „{ $name }“

## Confirmation
confirm-title = Ihre Einwilligung für { $platform } widerrufen?
confirm-what = Wenn Sie sie widerrufen:
confirm-tokens = wird jeder Zugang, den die Plattform für Sie bei Ihrem Identitätsanbieter hat, sofort entzogen;
confirm-views = löscht jede App der Plattform die Daten von Ihnen, die sie im Speicher hält;
confirm-future = kann die Plattform nicht mehr für Sie handeln, bis Sie erneut einwilligen.
confirm-receipt = Sie erhalten eine Quittung, die jeden dieser Schritte zeigt, sobald er erledigt ist.
confirm-submit = Ja, meine Einwilligung widerrufen
confirm-cancel = Nein, behalten

## Receipt
receipt-title = Quittung: Einwilligung für { $platform } widerrufen
receipt-pending = In Bearbeitung. Diese Seite aktualisiert sich, bis jeder Schritt erledigt ist.
receipt-done = Erledigt. Jeder Schritt unten ist bestätigt.
receipt-asked = Sie haben Ihre Einwilligung am { $time } widerrufen.
receipt-asked-reason-expired = Ihre Einwilligung endete nach langer Inaktivität, am { $time }.
receipt-asked-reason-incident = Ihre Einwilligung wurde wegen eines Sicherheitsvorfalls bei der Plattform beendet, am { $time }.
receipt-accepted = Ihr Antrag ist angenommen; der Tresor beginnt damit.
receipt-token-line = { $what }: { $how }
receipt-token-access = Ihr Zugriffstoken
receipt-token-refresh = Ihr Aktualisierungstoken (um zu handeln, während Sie abgemeldet sind)
receipt-token-revoked = beim Identitätsanbieter um { $time } entzogen
receipt-token-invalid = um { $time } bereits nicht mehr gültig: nichts zu entziehen
receipt-token-pending = wird beim Identitätsanbieter entzogen
receipt-token-retrying = wird entzogen: Der Identitätsanbieter hat noch nicht bestätigt (Versuch { $attempts })
receipt-view-acked = { $view } hat Ihre Daten um { $time } gelöscht, bestätigt
receipt-view-expired = { $view } hielt Ihre Daten nur bis zu ihrem Ablauf, um { $time }
receipt-view-pending = { $view }: wartet auf die Bestätigung, dass Ihre Daten gelöscht sind
receipt-no-views = Keine App dieser Plattform hatte Daten von Ihnen.
receipt-no-tokens = Die Plattform hatte kein Token für Sie.
receipt-finished = Alle Schritte am { $time } erledigt.
receipt-refresh = Aktualisieren
receipt-id = Nummer der Quittung
receipt-not-found = Für Sie gibt es keine Quittung mit dieser Nummer.

## The demo view
view-name = Demo-App
view-portal = Ihre Einwilligungen
view-title = Was diese App von Ihnen hält
view-intro = Diese App zeigt Daten, die eine vertrauenswürdige Plattform für Sie abgerufen hat. Sie hält sie nur im Speicher, nie länger als das Token gültig ist, mit dem sie abgerufen wurden, und löscht sie, wenn Sie Ihre Einwilligung widerrufen.
view-signed-out = Melden Sie sich über die Plattform an, um Ihre Daten hier zu sehen.
view-open = Mein Profil in diese App laden
view-sessions = Ihre Daten in dieser App
view-none = Diese App hält nichts von Ihnen.
view-session-opened = Abgerufen am { $time }
view-held-until = gehalten bis spätestens { $time }
view-state-held = im Speicher
view-state-wiped = gelöscht: Sie haben Ihre Einwilligung widerrufen
view-state-expired = gelöscht: die Zeit ist abgelaufen
view-show = Anzeigen
view-back = Zurück zur Startseite dieser App
view-data-title = Ihr Profil, wie diese App es hält
view-data-gone = Diese App hält diese Daten nicht mehr.
view-no-token = Die Plattform hat keine gültige Einwilligung von Ihnen: Es kann nichts abgerufen werden.
view-failed = Die Daten konnten nicht abgerufen werden. Bitte versuchen Sie es erneut.
view-forged = Dieses Formular kam nicht von der Seite dieser App; laden Sie sie neu und versuchen Sie es erneut.
