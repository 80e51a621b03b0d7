DROP TABLE console_actions;
DROP TABLE console_users;
