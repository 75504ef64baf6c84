## Shared by every page
site-name = Custodian
skip-to-content = Aller au contenu
language = Langue
sign-in = Se connecter auprès de votre fournisseur d’identité
sign-out = Se déconnecter
signed-in-as = Connecté·e en tant que { $subject }
never = jamais
datetime = { $day } { $month } { $year } à { $time }
month-1 = janvier
month-2 = février
month-3 = mars
month-4 = avril
month-5 = mai
month-6 = juin
month-7 = juillet
month-8 = août
month-9 = septembre
month-10 = octobre
month-11 = novembre
month-12 = décembre
unavailable = Cette information n’est pas disponible pour le moment. Veuillez réessayer dans un instant.
back-to-portal = Retour à vos consentements

## The person's portal
portal-title = Vos consentements
portal-intro = Ces plateformes de confiance peuvent agir en votre nom auprès des services de santé, parce que vous y avez consenti. Vous pouvez retirer votre consentement à tout moment.
portal-signed-out = Connectez-vous pour voir quelles plateformes détiennent votre consentement et pour le retirer.
portal-none = Aucune plateforme ne détient votre consentement.
platform-unregistered = Cette plateforme ne figure pas au registre des plateformes de confiance : l’entité juridique qui l’exploite est inconnue.
platform-legal = { $name }, numéro d’entreprise { $number }
platform-may-access = Ce à quoi elle a accès
platform-assurance = Niveau de garantie
platform-assurance-unknown = non précisé
platform-consented = Consentement donné
platform-last-acted = A agi pour vous en dernier
platform-views = Applications qui affichent vos données
platform-views-none = aucune enregistrée
revoke = Retirer le consentement
history-title = Consentements terminés
history-none = Aucun de vos consentements n’a encore pris fin.
history-ended = Terminé le { $when }
history-reason-revoked = Vous l’avez retiré
history-reason-expired = Terminé après une longue période d’inactivité
history-reason-incident = Terminé en raison d’un incident de sécurité à la plateforme
history-receipt = Voir ce qui a été fait
history-no-receipt = Pas de reçu

## Scopes, in plain words (a platform's registry entry may say more)
scope-openid = Qui vous êtes : votre identifiant auprès du fournisseur d’identité
scope-profile = Votre nom et votre profil de base
scope-email = Votre adresse e-mail
scope-offline_access = Agir pour vous lorsque vous n’êtes pas connecté·e
scope-unknown = Accès nommé « { $name } »

## Confirmation
confirm-title = Retirer votre consentement à { $platform } ?
confirm-what = Si vous le retirez :
confirm-tokens = tout accès que la plateforme détient pour vous auprès de votre fournisseur d’identité est retiré immédiatement ;
confirm-views = chaque application de la plateforme efface les données vous concernant qu’elle garde en mémoire ;
confirm-future = la plateforme ne peut plus agir pour vous, jusqu’à ce que vous consentiez à nouveau.
confirm-receipt = Vous recevrez un reçu qui montre chacune de ces étapes dès qu’elle est accomplie.
confirm-submit = Oui, retirer mon consentement
confirm-cancel = Non, le garder

## Receipt
receipt-title = Reçu : consentement à { $platform } retiré
receipt-pending = En cours. Cette page se met à jour jusqu’à ce que chaque étape soit accomplie.
receipt-done = Terminé. Chaque étape ci-dessous est confirmée.
receipt-asked = Vous avez retiré votre consentement le { $time }.
receipt-asked-reason-expired = Votre consentement a pris fin après une longue période d’inactivité, le { $time }.
receipt-asked-reason-incident = Votre consentement a pris fin en raison d’un incident de sécurité à la plateforme, le { $time }.
receipt-accepted = Votre demande est acceptée ; le coffre commence à la traiter.
receipt-token-line = { $what } : { $how }
receipt-token-access = Votre jeton d’accès
receipt-token-refresh = Votre jeton de rafraîchissement (pour agir lorsque vous êtes déconnecté·e)
receipt-token-revoked = retiré auprès du fournisseur d’identité à { $time }
receipt-token-invalid = déjà plus valable à { $time } : rien à retirer
receipt-token-pending = en cours de retrait auprès du fournisseur d’identité
receipt-token-retrying = en cours de retrait : le fournisseur d’identité n’a pas encore confirmé (tentative { $attempts })
receipt-view-acked = { $view } a effacé vos données à { $time }, confirmé
receipt-view-expired = { $view } ne gardait vos données que jusqu’à leur expiration, survenue à { $time }
receipt-view-pending = { $view } : en attente de la confirmation que vos données sont effacées
receipt-no-views = Aucune application de cette plateforme ne détenait de données vous concernant.
receipt-no-tokens = La plateforme ne détenait aucun jeton pour vous.
receipt-finished = Toutes les étapes accomplies le { $time }.
receipt-refresh = Actualiser
receipt-id = Numéro du reçu
receipt-not-found = Il n’y a pas de reçu portant ce numéro pour vous.

## The demo view
view-name = Application de démonstration
view-portal = Vos consentements
view-title = Ce que cette application garde de vous
view-intro = Cette application affiche des données qu’une plateforme de confiance a obtenues pour vous. Elle ne les garde qu’en mémoire, jamais au-delà de la validité du jeton qui a servi à les obtenir, et les efface lorsque vous retirez votre consentement.
view-signed-out = Connectez-vous via la plateforme pour voir vos données ici.
view-open = Charger mon profil dans cette application
view-sessions = Vos données dans cette application
view-none = Cette application ne garde rien de vous.
view-session-opened = Obtenu le { $time }
view-held-until = gardé au plus tard jusqu’au { $time }
view-state-held = en mémoire
view-state-wiped = effacé : vous avez retiré votre consentement
view-state-expired = effacé : son délai a expiré
view-show = Afficher
view-back = Retour à la page d’accueil de cette application
view-data-title = Votre profil, tel que cette application le garde
view-data-gone = Cette application ne garde plus ces données.
view-no-token = La plateforme ne détient aucun consentement valable de votre part : rien ne peut être obtenu.
view-failed = Les données n’ont pas pu être obtenues. Veuillez réessayer.
view-forged = Ce formulaire ne vient pas de la page de cette application ; rechargez-la et réessayez.
