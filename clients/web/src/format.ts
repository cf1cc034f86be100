// How values read to a person: enum names, times, counts.

import { NotificationPriority, NotificationType } from "@herald/client";

const TYPE_LABELS: Record<NotificationType, string> = {
  [NotificationType.UNSPECIFIED]: "Other",
  [NotificationType.NEW_MESSAGE]: "New message",
  [NotificationType.MESSAGE_REPLY]: "Reply",
  [NotificationType.USER_MENTIONED]: "Mention",
  [NotificationType.MESSAGE_REACTION]: "Reaction",
  [NotificationType.CONTACT_REQUEST]: "Contact request",
  [NotificationType.CONTACT_ACCEPTED]: "Contact accepted",
  [NotificationType.NEW_CONVERSATION_DIRECT]: "New conversation",
  [NotificationType.NEW_CONVERSATION_GROUP]: "New group conversation",
  [NotificationType.MEMBER_JOINED]: "Member joined",
  [NotificationType.MISSED_CALL]: "Missed call",
  [NotificationType.SYSTEM]: "System",
};

const PRIORITY_LABELS: Record<NotificationPriority, string> = {
  [NotificationPriority.UNSPECIFIED]: "Normal",
  [NotificationPriority.LOW]: "Low",
  [NotificationPriority.NORMAL]: "Normal",
  [NotificationPriority.HIGH]: "High",
  [NotificationPriority.URGENT]: "Urgent",
};

export const typeLabel = (type: NotificationType): string => TYPE_LABELS[type] ?? "Other";
export const priorityLabel = (priority: NotificationPriority): string => PRIORITY_LABELS[priority] ?? "Normal";

/** "just now", "5 min ago", "3 h ago", or the date. */
export function ago(seconds: bigint | undefined, now = Date.now()): string {
  if (seconds === undefined) return "";
  const ms = Number(seconds) * 1000;
  const elapsed = Math.max(0, Math.round((now - ms) / 1000));
  if (elapsed < 45) return "just now";
  if (elapsed < 3600) return `${Math.round(elapsed / 60)} min ago`;
  if (elapsed < 86_400) return `${Math.round(elapsed / 3600)} h ago`;
  return new Date(ms).toLocaleDateString();
}

export function isoTime(seconds: bigint | undefined): string | undefined {
  return seconds === undefined ? undefined : new Date(Number(seconds) * 1000).toISOString();
}

export function plural(n: number, one: string, many = `${one}s`): string {
  return `${n} ${n === 1 ? one : many}`;
}
